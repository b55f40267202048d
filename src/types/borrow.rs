//! Zero-copy interop: tensors over memory the caller owns (a cudarc `CudaSlice`/`CudaView`/
//! `CudaViewMut`, a raw device pointer from another framework, or, on the emulator, a host
//! slice), operated on in place.
//!
//! # Why this is sound
//!
//! A tensor over borrowed memory (`Buffer::Borrowed`) is only ever reachable through a
//! [`TensorRef<'a, T>`] or a [`TensorMut<'a, T>`], whose lifetime `'a` is the borrow's, so no
//! such tensor outlives the memory:
//!
//! - they hand out `&DeviceTensor` (and `TensorMut::with_mut` a `&mut DeviceTensor` for the
//!   length of a closure), never an owned one; `DeviceTensor` is not `Clone`, and its owning
//!   views (`view`, `rows`, `row`, `reshape`) return `Error::BorrowedView` for borrowed memory.
//!   Views go through the wrappers instead, which give them the same lifetime.
//! - `&mut DeviceTensor` would let safe code move the borrowed tensor out (`std::mem::swap`
//!   with an owned one), so it is lent only inside `with_mut`, which checks afterwards (also
//!   when the closure panics) that the tensor it lent is still in place, and aborts the process
//!   otherwise: the only way a borrowed tensor could escape is stopped before the borrow ends.
//!   (A wrapper whose `Drop` did that check could be leaked with `mem::forget`; the closure
//!   cannot be skipped.)
//! - On a GPU, kernels run asynchronously: the safe constructors accept only memory used on
//!   the device's own stream, so that anything the owner does next with it (a free, a kernel,
//!   a copy) is queued behind this crate's kernels, whatever happens to the wrapper. Memory
//!   used on other streams goes through the `unsafe` raw-pointer constructors, whose caller
//!   orders the streams.
//! - On the emulator every launch completes before it returns, so a host slice borrowed for
//!   `'a` is not touched after `'a`.
//!
//! Overlap checks compare addresses, so two borrows of the same memory (or a borrow and an
//! owned tensor) that overlap are caught like views of one tensor.

use std::marker::PhantomData;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use crate::runtime::device::{Borrowed, Device};
use crate::types::element::TensorElement;
use crate::types::error::{Error, Result};
use crate::types::tensor::{DeviceTensor, element_count};

/// A read-only tensor over memory the caller lent for `'a`. Dereferences to a
/// [`DeviceTensor`], so it is the input of any operation (`softmax(&x)`, `softmax_into(&x, ...)`).
/// Its views (`view`, `rows`, `row`, `reshape`) are `TensorRef<'a>`s too.
pub struct TensorRef<'a, T: TensorElement> {
    tensor: DeviceTensor<T>,
    _borrow: PhantomData<&'a [T]>,
}

/// A writable tensor over memory the caller lent exclusively for `'a`: readable through
/// `Deref`, written through [`TensorMut::with_mut`] (the output of `softmax_into`, the tensor of
/// `softmax_inplace`). Its views are `TensorMut`s reborrowing it, or `TensorRef`s.
pub struct TensorMut<'a, T: TensorElement> {
    tensor: DeviceTensor<T>,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<T: TensorElement> std::fmt::Debug for TensorRef<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorRef({:?})", self.tensor)
    }
}

impl<T: TensorElement> std::fmt::Debug for TensorMut<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorMut({:?})", self.tensor)
    }
}

impl<T: TensorElement> Deref for TensorRef<'_, T> {
    type Target = DeviceTensor<T>;
    fn deref(&self) -> &DeviceTensor<T> {
        &self.tensor
    }
}

impl<T: TensorElement> Deref for TensorMut<'_, T> {
    type Target = DeviceTensor<T>;
    fn deref(&self) -> &DeviceTensor<T> {
        &self.tensor
    }
}

/// Checks what every constructor needs and makes the tensor: `shape` fits in `available`
/// elements from `offset`, the first element at `base + offset` is aligned for `T`.
fn borrowed<T: TensorElement>(
    device: &Device,
    base: u64,
    available: usize,
    offset: usize,
    shape: &[usize],
    context: Option<Arc<CudaStream>>,
) -> Result<DeviceTensor<T>> {
    let len = element_count(shape)?;
    if offset.checked_add(len).is_none_or(|end| end > available) {
        return Err(Error::OutOfRange {
            what: "borrowed memory",
            offset,
            len,
            available,
        });
    }
    // Fits: offset <= available elements of a real allocation.
    let addr = base.wrapping_add((offset * size_of::<T>()) as u64);
    if base == 0 {
        return Err(Error::BadBorrow {
            what: "borrowed memory at a null pointer; pass the address of the first element".into(),
        });
    }
    if !addr.is_multiple_of(align_of::<T>() as u64) {
        return Err(Error::Misaligned {
            addr,
            align: align_of::<T>(),
        });
    }
    Ok(DeviceTensor::over_borrowed(
        device,
        Borrowed {
            addr,
            _context: context,
        },
        shape,
    ))
}

/// The device's stream, after checking that cudarc memory used on `memory_stream` can be used
/// in place by it: same context (else `ForeignBuffer`) and same stream (see the module doc).
fn same_stream<'d>(
    device: &'d Device,
    memory_stream: &Arc<CudaStream>,
) -> Result<&'d Arc<CudaStream>> {
    let stream = device.cuda_stream().ok_or_else(|| Error::BadBorrow {
        what: "CUDA memory cannot be borrowed by the emulator; copy it to the host, or use a GPU Device".into(),
    })?;
    if memory_stream.context().cu_ctx() != stream.context().cu_ctx() {
        return Err(Error::ForeignBuffer);
    }
    if memory_stream.cu_stream() != stream.cu_stream() {
        return Err(Error::BadBorrow {
            what: "the borrowed memory is used on another stream than the device's, so this crate's kernels \
                   would not be ordered with its owner's next use; make the Device with \
                   Device::cuda_on_stream(memory.stream().clone()), or use DeviceTensor::from_raw_parts and order \
                   the streams yourself"
                .into(),
        });
    }
    Ok(stream)
}

/// Errors unless `device` is the emulator (host slices stand in for device memory only there).
fn emulator_only(device: &Device) -> Result<()> {
    if device.is_emulator() {
        Ok(())
    } else {
        Err(Error::BadBorrow {
            what:
                "a host slice can be borrowed only by the emulator; on a GPU, borrow device memory \
                   (a CudaSlice or CudaView, or a raw device pointer)"
                    .into(),
        })
    }
}

impl<T: TensorElement> DeviceTensor<T> {
    /// Reads cudarc memory in place, without a copy: `shape` from element `offset` of `memory`
    /// (a `CudaSlice`, `CudaView` or `CudaViewMut`), borrowed for `'a`.
    ///
    /// The memory must be on the device's context (else `Error::ForeignBuffer`) and used on the
    /// device's stream (make the device with `Device::cuda_on_stream(memory.stream().clone())`;
    /// else `Error::BadBorrow`), so that whatever its owner does with it next is queued after
    /// this crate's kernels. `shape` must fit from `offset` (`Error::OutOfRange`).
    pub fn borrow_cuda<'a, S: DevicePtr<T>>(
        device: &Device,
        memory: &'a S,
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorRef<'a, T>> {
        let stream = same_stream(device, memory.stream())?;
        // Orders the device's stream after the memory's last write (a no-op on one stream).
        let (base, _record) = memory.device_ptr(stream);
        let tensor = borrowed(
            device,
            base,
            memory.len(),
            offset,
            shape,
            Some(memory.stream().clone()),
        )?;
        Ok(TensorRef {
            tensor,
            _borrow: PhantomData,
        })
    }

    /// Writes cudarc memory in place: as [`DeviceTensor::borrow_cuda`], for a `CudaSlice` or
    /// `CudaViewMut` borrowed exclusively for `'a`.
    pub fn borrow_cuda_mut<'a, S: DevicePtrMut<T>>(
        device: &Device,
        memory: &'a mut S,
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorMut<'a, T>> {
        let stream = same_stream(device, memory.stream())?.clone();
        let available = memory.len();
        let context = Some(memory.stream().clone());
        let (base, _record) = memory.device_ptr_mut(&stream);
        let tensor = borrowed(device, base, available, offset, shape, context)?;
        Ok(TensorMut {
            tensor,
            _borrow: PhantomData,
        })
    }

    /// Reads a host slice in place on the emulator (which runs kernels on host memory): the
    /// emulator's counterpart of `borrow_cuda`. `Error::BadBorrow` on a GPU device.
    pub fn borrow_host<'a>(
        device: &Device,
        data: &'a [T],
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorRef<'a, T>> {
        emulator_only(device)?;
        let tensor = borrowed(
            device,
            data.as_ptr() as u64,
            data.len(),
            offset,
            shape,
            None,
        )?;
        Ok(TensorRef {
            tensor,
            _borrow: PhantomData,
        })
    }

    /// Writes a host slice in place on the emulator: the counterpart of `borrow_cuda_mut`.
    pub fn borrow_host_mut<'a>(
        device: &Device,
        data: &'a mut [T],
        offset: usize,
        shape: &[usize],
    ) -> Result<TensorMut<'a, T>> {
        emulator_only(device)?;
        let tensor = borrowed(
            device,
            data.as_mut_ptr() as u64,
            data.len(),
            offset,
            shape,
            None,
        )?;
        Ok(TensorMut {
            tensor,
            _borrow: PhantomData,
        })
    }

    /// Reads `shape` elements at device address `ptr` in place: for memory from frameworks on
    /// other cudarc versions (or none). On the emulator, `ptr` is a host address. Checks what
    /// it can (null, alignment for `T`, the shape's size) and returns an error for those.
    ///
    /// # Safety
    ///
    /// For all of `'a` (which the caller chooses):
    /// - `ptr` points to `shape`'s element count of initialised `T`s, allocated on the
    ///   device's CUDA context (on the emulator: host memory), and nothing frees or writes them;
    /// - the work this crate enqueues on the device's stream is ordered with every other use
    ///   of the memory: other streams wait for it (an event, or `Device::synchronize`) before
    ///   they write or free it, and the memory's last write precedes the first use here.
    pub unsafe fn from_raw_parts<'a>(
        device: &Device,
        ptr: u64,
        shape: &[usize],
    ) -> Result<TensorRef<'a, T>> {
        let context = device.cuda_stream().cloned();
        let tensor = borrowed(device, ptr, element_count(shape)?, 0, shape, context)?;
        Ok(TensorRef {
            tensor,
            _borrow: PhantomData,
        })
    }

    /// Writes `shape` elements at device address `ptr` in place: as `from_raw_parts`.
    ///
    /// # Safety
    ///
    /// As for [`DeviceTensor::from_raw_parts`], and besides: nothing else reads or writes the
    /// memory during `'a` except through this tensor (and work ordered before or after it).
    pub unsafe fn from_raw_parts_mut<'a>(
        device: &Device,
        ptr: u64,
        shape: &[usize],
    ) -> Result<TensorMut<'a, T>> {
        let context = device.cuda_stream().cloned();
        let tensor = borrowed(device, ptr, element_count(shape)?, 0, shape, context)?;
        Ok(TensorMut {
            tensor,
            _borrow: PhantomData,
        })
    }
}

impl<'a, T: TensorElement> TensorRef<'a, T> {
    fn wrap(tensor: DeviceTensor<T>) -> TensorRef<'a, T> {
        TensorRef {
            tensor,
            _borrow: PhantomData,
        }
    }

    /// The borrowed tensor (what `Deref` gives).
    pub fn as_tensor(&self) -> &DeviceTensor<T> {
        &self.tensor
    }

    /// A view of `shape` from element `offset` (as `DeviceTensor::view`), borrowing the same
    /// memory for the same `'a`.
    pub fn view(&self, offset: usize, shape: &[usize]) -> Result<TensorRef<'a, T>> {
        self.tensor.view_any(offset, shape).map(Self::wrap)
    }

    /// Rows `start..end` along the first dimension (as `DeviceTensor::rows`).
    pub fn rows(&self, start: usize, end: usize) -> Result<TensorRef<'a, T>> {
        self.tensor.rows_any(start, end).map(Self::wrap)
    }

    /// Row `i`, first dimension dropped (as `DeviceTensor::row`).
    pub fn row(&self, i: usize) -> Result<TensorRef<'a, T>> {
        self.tensor.row_any(i).map(Self::wrap)
    }

    /// The same elements with another shape (as `DeviceTensor::reshape`).
    pub fn reshape(&self, shape: &[usize]) -> Result<TensorRef<'a, T>> {
        self.tensor.reshape_any(shape).map(Self::wrap)
    }
}

impl<'a, T: TensorElement> TensorMut<'a, T> {
    fn wrap<'b>(tensor: DeviceTensor<T>) -> TensorMut<'b, T> {
        TensorMut {
            tensor,
            _borrow: PhantomData,
        }
    }

    /// Runs `f` with the borrowed tensor as a `&mut DeviceTensor` (the output of an operation)
    /// and returns what it returns. Aborts the process if `f` moved the borrowed tensor out
    /// (`std::mem::swap` or `replace` with another tensor): it could then outlive the borrow.
    pub fn with_mut<R>(&mut self, f: impl FnOnce(&mut DeviceTensor<T>) -> R) -> R {
        let lent = self.tensor.buffer_id();
        let offset = self.tensor.offset();
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut self.tensor)));
        if self.tensor.buffer_id() != lent || self.tensor.offset() != offset {
            // Not a panic: unwinding would let the escaped tensor live on past the borrow.
            eprintln!(
                "cuda-softmax: a tensor over borrowed memory was moved out of TensorMut::with_mut; \
                 it could outlive the memory, so the process stops"
            );
            std::process::abort();
        }
        match result {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// A read-only view of `shape` from element `offset`, borrowing this tensor.
    pub fn view(&self, offset: usize, shape: &[usize]) -> Result<TensorRef<'_, T>> {
        self.tensor.view_any(offset, shape).map(TensorRef::wrap)
    }

    /// A writable view of `shape` from element `offset`, reborrowing this tensor.
    pub fn view_mut(&mut self, offset: usize, shape: &[usize]) -> Result<TensorMut<'_, T>> {
        self.tensor.view_any(offset, shape).map(Self::wrap)
    }

    /// Writable rows `start..end` along the first dimension, reborrowing this tensor.
    pub fn rows_mut(&mut self, start: usize, end: usize) -> Result<TensorMut<'_, T>> {
        self.tensor.rows_any(start, end).map(Self::wrap)
    }

    /// The same elements with another shape, reborrowing this tensor.
    pub fn reshape_mut(&mut self, shape: &[usize]) -> Result<TensorMut<'_, T>> {
        self.tensor.reshape_any(shape).map(Self::wrap)
    }

    /// Overwrites the elements with `data` (same length), as `DeviceTensor::copy_from_host`.
    pub fn copy_from_host(&mut self, data: &[T]) -> Result<()> {
        self.tensor.copy_from_host(data)
    }
}
