//! Guest loaders: how a boot module becomes a guest's first memory contents and start
//! state. [`linux`]: a Linux bzImage by the Linux/x86 boot protocol. (Flat images are
//! checked by `hv_abi::ImageHeader` and loaded by `hypervisor`.)

pub mod linux;
