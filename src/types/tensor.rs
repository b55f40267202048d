//! `DeviceTensor<T>`: a typed, shaped view of device memory. Views (rows, slices, reshapes)
//! share memory with the tensor they come from, like CUDA pointers do.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView};

use crate::runtime::device::{Buffer, Device};
use crate::runtime::launch::AccessRange;
use crate::types::element::TensorElement;
use crate::types::error::{Error, Result};

/// A typed, shaped view of device memory (GPU memory, or host memory on the emulator).
/// Views made from it share its memory; `softmax_into` checks how they overlap.
pub struct DeviceTensor<T: TensorElement> {
    device: Device,
    buffer: Arc<Buffer<T>>,
    /// First element of this view within `buffer`.
    offset: usize,
    shape: Vec<usize>,
}

impl<T: TensorElement> std::fmt::Debug for DeviceTensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceTensor<{}>(shape {:?}, offset {}, on {:?})",
            T::NAME,
            self.shape,
            self.offset,
            self.device
        )
    }
}

/// The number of elements of `shape`. Every product of its non-zero dimensions must fit, in
/// bytes too, so that all stride and offset arithmetic on the shape fits: `[0, MAX, MAX]` is
/// rejected like `[MAX, MAX, 0]` (a zero dimension does not make the others meaningful).
pub(crate) fn element_count(shape: &[usize]) -> Result<usize> {
    let too_large = || Error::ShapeTooLarge {
        shape: shape.to_vec(),
    };
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n.checked_mul(16).is_some()) // its byte size must fit too
        .ok_or_else(too_large)?;
    Ok(if shape.contains(&0) { 0 } else { nonzero })
}

impl<T: TensorElement> DeviceTensor<T> {
    /// Copies `data` to a new tensor of `shape` (any rank; `data.len()` must equal the product).
    pub fn from_host(device: &Device, data: &[T], shape: &[usize]) -> Result<Self> {
        let expected = element_count(shape)?;
        if data.len() != expected {
            return Err(Error::LengthMismatch {
                expected,
                got: data.len(),
            });
        }
        let mut t = Self::uninit(device, shape)?;
        t.copy_from_host(data)?;
        Ok(t)
    }

    /// A new tensor whose contents are unspecified (every bit pattern is a valid element).
    pub fn uninit(device: &Device, shape: &[usize]) -> Result<Self> {
        Self::alloc(device, shape, false)
    }

    /// A new tensor of zeros (set on the device, no host copy).
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Self> {
        Self::alloc(device, shape, true)
    }

    fn alloc(device: &Device, shape: &[usize], zeroed: bool) -> Result<Self> {
        let len = element_count(shape)?;
        Ok(DeviceTensor {
            device: device.clone(),
            buffer: Arc::new(device.alloc::<T>(len, zeroed)?),
            offset: 0,
            shape: shape.to_vec(),
        })
    }

    /// Wraps a cudarc buffer; the device must have been made from a stream of the same context
    /// (`Device::cuda_on_stream`). `shape` may cover a prefix of the buffer.
    pub fn from_cuda_slice(device: &Device, slice: CudaSlice<T>, shape: &[usize]) -> Result<Self> {
        let stream = device.cuda_stream().ok_or(Error::ForeignBuffer)?;
        if slice.context().cu_ctx() != stream.context().cu_ctx() {
            return Err(Error::ForeignBuffer);
        }
        let len = element_count(shape)?;
        if len > slice.len() {
            return Err(Error::OutOfRange {
                what: "from_cuda_slice",
                offset: 0,
                len,
                available: slice.len(),
            });
        }
        Ok(DeviceTensor {
            device: device.clone(),
            buffer: Arc::new(Buffer::Cuda(slice)),
            offset: 0,
            shape: shape.to_vec(),
        })
    }

    /// Hands the underlying cudarc buffer back when this tensor is its only user and covers it
    /// from the start; otherwise returns the tensor unchanged.
    pub fn into_cuda_slice(self) -> std::result::Result<CudaSlice<T>, Self> {
        if self.offset != 0 || !matches!(*self.buffer, Buffer::Cuda(_)) {
            return Err(self);
        }
        match Arc::try_unwrap(self.buffer) {
            Ok(Buffer::Cuda(slice)) => Ok(slice),
            Ok(Buffer::Host(_) | Buffer::Borrowed(_)) => unreachable!("checked above"),
            Err(buffer) => Err(DeviceTensor {
                device: self.device,
                buffer,
                offset: self.offset,
                shape: self.shape,
            }),
        }
    }

    /// The elements of this view as a cudarc view (`None` on the emulator and over borrowed
    /// memory, whose owner has its own view of it).
    pub fn cuda_view(&self) -> Option<CudaView<'_, T>> {
        match &*self.buffer {
            Buffer::Cuda(s) => Some(s.slice(self.offset..self.offset + self.len())),
            Buffer::Host(_) | Buffer::Borrowed(_) => None,
        }
    }

    /// The device the tensor lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address of this view's first element on its device (a `CUdeviceptr` on a GPU, a
    /// host address on the emulator): for handing the memory to other code, in stream order.
    pub fn device_addr(&self) -> u64 {
        self.addr()
    }

    /// First element of this view within its buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// A view of `shape` starting `offset` elements into this view (within its extent).
    /// Refused (`Error::BorrowedView`) on a tensor over borrowed memory: a view from a
    /// `TensorRef`/`TensorMut` keeps the borrow's lifetime; one from here would not.
    pub fn view(&self, offset: usize, shape: &[usize]) -> Result<Self> {
        self.owned_only("view")?;
        self.view_any(offset, shape)
    }

    /// The same elements with another shape (refused on borrowed memory, as `view` is).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        self.owned_only("reshape")?;
        self.reshape_any(shape)
    }

    /// Rows `start..end` along the first dimension (refused on borrowed memory, as `view` is).
    pub fn rows(&self, start: usize, end: usize) -> Result<Self> {
        self.owned_only("rows")?;
        self.rows_any(start, end)
    }

    /// Row `i` along the first dimension, with the first dimension dropped (refused on borrowed
    /// memory, as `view` is).
    pub fn row(&self, i: usize) -> Result<Self> {
        self.owned_only("row")?;
        self.row_any(i)
    }

    /// Errors when this tensor is over borrowed memory: an owned view of it could outlive the
    /// borrow (see `crate::types::borrow`).
    fn owned_only(&self, what: &'static str) -> Result<()> {
        if self.buffer.is_borrowed() {
            return Err(Error::BorrowedView { what });
        }
        Ok(())
    }

    /// `view` without the borrowed-memory check: for the crate's own short-lived views (which
    /// never leave the call that makes them) and for the borrow wrappers (which give the result
    /// the borrow's lifetime).
    pub(crate) fn view_any(&self, offset: usize, shape: &[usize]) -> Result<Self> {
        let len = element_count(shape)?;
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(Error::OutOfRange {
                what: "view",
                offset,
                len,
                available: self.len(),
            });
        }
        Ok(DeviceTensor {
            device: self.device.clone(),
            buffer: self.buffer.clone(),
            offset: self.offset + offset,
            shape: shape.to_vec(),
        })
    }

    pub(crate) fn reshape_any(&self, shape: &[usize]) -> Result<Self> {
        if element_count(shape)? != self.len() {
            return Err(Error::ShapeMismatch {
                what: "reshape",
                left: self.shape.clone(),
                right: shape.to_vec(),
            });
        }
        self.view_any(0, shape)
    }

    pub(crate) fn rows_any(&self, start: usize, end: usize) -> Result<Self> {
        let (&n, rest) = self
            .shape
            .split_first()
            .ok_or(Error::ScalarInput { op: "rows" })?;
        if start > end {
            return Err(Error::BadRange {
                what: "rows",
                start,
                end,
            });
        }
        if end > n {
            return Err(Error::OutOfRange {
                what: "rows",
                offset: start,
                len: end - start,
                available: n,
            });
        }
        // The shape was checked when the tensor was made: these products fit.
        let row_len = element_count(rest)?;
        let offset = start
            .checked_mul(row_len)
            .ok_or_else(|| Error::ShapeTooLarge {
                shape: self.shape.clone(),
            })?;
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        self.view_any(offset, &shape)
    }

    pub(crate) fn row_any(&self, i: usize) -> Result<Self> {
        let n = self.shape.first().copied().unwrap_or(0);
        let end = i
            .checked_add(1)
            .filter(|&e| e <= n)
            .ok_or(Error::OutOfRange {
                what: "row",
                offset: i,
                len: 1,
                available: n,
            })?;
        let r = self.rows_any(i, end)?;
        r.reshape_any(&self.shape[1..])
    }

    /// A tensor over caller memory (`Buffer::Borrowed`) at `addr`, holding `len` elements of
    /// which this tensor covers the first `shape`'s. Only `crate::types::borrow` calls it; the caller
    /// checked the shape, range, alignment and context.
    pub(crate) fn over_borrowed(
        device: &Device,
        borrowed: crate::runtime::device::Borrowed,
        shape: &[usize],
    ) -> Self {
        DeviceTensor {
            device: device.clone(),
            buffer: Arc::new(Buffer::Borrowed(borrowed)),
            offset: 0,
            shape: shape.to_vec(),
        }
    }

    /// The address of the buffer this tensor shares with its views: the same for every view
    /// of one borrow (for `TensorMut::with_mut`'s check that the borrowed tensor stayed put).
    pub(crate) fn buffer_id(&self) -> *const Buffer<T> {
        Arc::as_ptr(&self.buffer)
    }

    /// Overwrites this view's elements with `data` (same length).
    pub fn copy_from_host(&mut self, data: &[T]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::LengthMismatch {
                expected: self.len(),
                got: data.len(),
            });
        }
        match &*self.buffer {
            Buffer::Cuda(s) => {
                // SAFETY: the destination range lies inside the allocation (view invariant).
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(
                        self.addr(),
                        data,
                        s.stream().cu_stream(),
                    )
                }
                .map_err(|e| Error::driver("cuMemcpyHtoDAsync", e))?;
                s.stream()
                    .synchronize()
                    .map_err(|e| Error::driver("cuStreamSynchronize", e))
            }
            Buffer::Borrowed(_) => self.copy_borrowed(HostSide::From(data)),
            Buffer::Host(memory) => {
                // In stream order with the device's other operations: a kernel that reads this
                // memory never sees it change under it.
                self.device.on_emulator_stream(|| {
                    // SAFETY: offset + len is within the buffer (view invariant), and the
                    // stream lock keeps every kernel of the device away from it meanwhile.
                    unsafe {
                        memory.write(
                            self.offset * size_of::<T>(),
                            data.as_ptr() as *const u8,
                            std::mem::size_of_val(data),
                        )
                    }
                });
                Ok(())
            }
        }
    }

    /// Copies this view's elements to the host, after the work already enqueued on the device.
    pub fn to_host(&self) -> Result<Vec<T>> {
        let mut out = vec![T::default(); self.len()];
        match &*self.buffer {
            Buffer::Cuda(s) => {
                // SAFETY: the source range lies inside the allocation (view invariant).
                unsafe {
                    cudarc::driver::result::memcpy_dtoh_async(
                        &mut out,
                        self.addr(),
                        s.stream().cu_stream(),
                    )
                }
                .map_err(|e| Error::driver("cuMemcpyDtoHAsync", e))?;
                s.stream()
                    .synchronize()
                    .map_err(|e| Error::driver("cuStreamSynchronize", e))?;
            }
            Buffer::Borrowed(_) => self.copy_borrowed(HostSide::Into(&mut out))?,
            Buffer::Host(memory) => {
                self.device.on_emulator_stream(|| {
                    // SAFETY: offset + len is within the buffer (view invariant); the stream
                    // lock orders this copy after the device's earlier operations.
                    unsafe {
                        memory.read(
                            self.offset * size_of::<T>(),
                            out.as_mut_ptr() as *mut u8,
                            out.len() * size_of::<T>(),
                        )
                    }
                });
            }
        }
        Ok(out)
    }

    /// Copies between the host and this view of borrowed memory (`data` holds `self.len()`
    /// elements). On a GPU on the device's stream, which the borrow is ordered with (then waits
    /// for it); on the emulator under its stream lock.
    fn copy_borrowed(&self, data: HostSide<'_, T>) -> Result<()> {
        let addr = self.addr();
        match (self.device.cuda_stream(), data) {
            (Some(stream), HostSide::From(src)) => {
                // SAFETY: the range lies inside the borrowed memory (view invariant; the borrow
                // constructors checked it), which stays valid for the borrow.
                unsafe { cudarc::driver::result::memcpy_htod_async(addr, src, stream.cu_stream()) }
                    .map_err(|e| Error::driver("cuMemcpyHtoDAsync", e))?;
                stream
                    .synchronize()
                    .map_err(|e| Error::driver("cuStreamSynchronize", e))
            }
            (Some(stream), HostSide::Into(dst)) => {
                // SAFETY: as above.
                unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, addr, stream.cu_stream()) }
                    .map_err(|e| Error::driver("cuMemcpyDtoHAsync", e))?;
                stream
                    .synchronize()
                    .map_err(|e| Error::driver("cuStreamSynchronize", e))
            }
            (None, data) => {
                self.device.on_emulator_stream(|| {
                    // SAFETY: on the emulator the borrowed memory is host memory the borrow
                    // holds, these elements within it (checked by the constructors); the stream
                    // lock keeps every kernel of the device away from it meanwhile.
                    unsafe {
                        match data {
                            HostSide::From(src) => std::ptr::copy_nonoverlapping(
                                src.as_ptr(),
                                addr as *mut T,
                                src.len(),
                            ),
                            HostSide::Into(dst) => std::ptr::copy_nonoverlapping(
                                addr as *const T,
                                dst.as_mut_ptr(),
                                dst.len(),
                            ),
                        }
                    }
                });
                Ok(())
            }
        }
    }

    /// Address of this view's first element on its device.
    pub(crate) fn addr(&self) -> u64 {
        self.buffer.base_addr() + (self.offset * size_of::<T>()) as u64
    }

    pub(crate) fn access_range(&self, writable: bool) -> AccessRange {
        AccessRange {
            addr: self.addr(),
            bytes: (self.len() * size_of::<T>()) as u64,
            writable,
        }
    }

    /// How two views on one device relate in memory. Compared by address, so that buffers
    /// wrapped twice from the same cudarc memory are caught too.
    /// Views of different element types are never identical unless their bytes coincide.
    pub(crate) fn overlap<U: TensorElement>(&self, other: &DeviceTensor<U>) -> Overlap {
        let (a0, b0) = (self.addr(), other.addr());
        let (a1, b1) = (
            a0 + (self.len() * size_of::<T>()) as u64,
            b0 + (other.len() * size_of::<U>()) as u64,
        );
        if self.is_empty() || other.is_empty() || a1 <= b0 || b1 <= a0 {
            Overlap::None
        } else if a0 == b0 && a1 == b1 {
            Overlap::Identical
        } else {
            Overlap::Partial
        }
    }
}

/// The host side of a copy to or from borrowed memory.
enum HostSide<'s, T> {
    From(&'s [T]),
    Into(&'s mut [T]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overlap {
    None,
    Identical,
    Partial,
}
