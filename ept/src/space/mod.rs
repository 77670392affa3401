//! The guest address space: areas, backends, on-demand faults, guest memory access.
