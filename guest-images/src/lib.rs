//! Guest-side library of the tiny test guests.
#![no_std]
