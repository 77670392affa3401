//! Plain-data types that may be copied to and from guest memory byte for byte.

use core::mem::{MaybeUninit, size_of};

/// A type whose values are plain bytes: every bit pattern of `size_of::<Self>()` bytes
/// is a valid value, and a value has no padding, pointers or interior mutability.
///
/// Guest memory is untrusted input: [`read_obj`](super::AddressSpace::read_obj) may
/// hand back any bit pattern, which is only sound for such types.
///
/// # Safety
/// Implement only for types with no padding bytes and no invalid bit patterns
/// (integers, arrays of them, `#[repr(C)]` structs of them without padding).
pub unsafe trait Pod: Copy + 'static {}

macro_rules! impl_pod {
    ($($t:ty),*) => {
        $(
            // SAFETY: primitive integers have no padding and accept every bit pattern.
            unsafe impl Pod for $t {}
        )*
    };
}

impl_pod!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

// SAFETY: an array of plain-data elements has no padding between elements (size is a
// multiple of alignment) and every bit pattern of each element is valid.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// The bytes of a plain-data value.
pub(crate) fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so all `size_of::<T>()` bytes behind the reference
    // are initialized; the slice borrows `value` for its lifetime.
    unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// The bytes of a plain-data value, writable (any bytes written form a valid `T`).
pub(crate) fn bytes_of_mut<T: Pod>(value: &mut T) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; every bit pattern is a valid `T`, so writes through the
    // slice cannot create an invalid value; the slice borrows `value` exclusively.
    unsafe { core::slice::from_raw_parts_mut((value as *mut T).cast::<u8>(), size_of::<T>()) }
}

/// An all-zero value of a plain-data type.
pub(crate) fn zeroed<T: Pod>() -> T {
    // SAFETY: the all-zero bit pattern is a valid `T` because every pattern is.
    unsafe { MaybeUninit::<T>::zeroed().assume_init() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let mut v: [u32; 2] = zeroed();
        assert_eq!(v, [0, 0]);
        bytes_of_mut(&mut v).copy_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(v, [1, 2]);
        assert_eq!(bytes_of(&0x0102_u16), &[2, 1]);
    }
}
