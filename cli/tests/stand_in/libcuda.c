/* A stand-in for the NVIDIA driver library (libcuda.so), built by tests/driver_probe.rs.
 *
 * It implements the driver functions cuda-softmax calls (through cudarc) just well enough for
 * every host-side call path to run: one device, "device" memory that is host memory (so copies
 * work), and kernel launches that do nothing. The test links it with a version script that
 * exports exactly the functions it wants (all of the crate's list, or only cuInit), so a
 * function cudarc calls but the crate's list lacks shows up as a failure there.
 *
 * Knobs, read at run time:
 *   CS_STAND_IN_CUINIT=N  cuInit returns N (34 = CUDA_ERROR_STUB_LIBRARY, like the toolkit's
 *                         stubs/libcuda.so; 100 = CUDA_ERROR_NO_DEVICE).
 *   CS_STAND_IN_POOLS=0   the device reports no memory pools (cudarc then uses cuMemAlloc_v2).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

enum {
    SUCCESS = 0,
    ERROR_INVALID_VALUE = 1,
    ERROR_OUT_OF_MEMORY = 2,
    ERROR_INVALID_DEVICE = 101,
};

static int handle_storage; /* contexts, modules, functions and events all point here */

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v ? atoi(v) : fallback;
}

CUresult cuInit(unsigned flags) {
    (void)flags;
    return env_int("CS_STAND_IN_CUINIT", SUCCESS);
}

CUresult cuDriverGetVersion(int *version) {
    *version = 13000;
    return SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
    switch (error) {
    case 34: *name = "CUDA_ERROR_STUB_LIBRARY"; return SUCCESS;
    case 100: *name = "CUDA_ERROR_NO_DEVICE"; return SUCCESS;
    default: *name = "CUDA_ERROR_UNKNOWN"; return SUCCESS;
    }
}

CUresult cuGetErrorString(CUresult error, const char **text) {
    switch (error) {
    case 34: *text = "CUDA driver is a stub library"; return SUCCESS;
    case 100: *text = "no CUDA-capable device is detected"; return SUCCESS;
    default: *text = "unknown error"; return SUCCESS;
    }
}

CUresult cuDeviceGetCount(int *count) {
    *count = 1;
    return SUCCESS;
}

CUresult cuDeviceGet(int *device, int ordinal) {
    if (ordinal != 0) return ERROR_INVALID_DEVICE;
    *device = 0;
    return SUCCESS;
}

CUresult cuDeviceGetAttribute(int *value, int attribute, int device) {
    (void)device;
    switch (attribute) {
    case 16: *value = 132; break;                     /* multiprocessors */
    case 75: *value = 9; break;                       /* compute capability major */
    case 76: *value = 0; break;                       /* minor */
    case 97: *value = 227 * 1024; break;              /* opt-in shared memory per block */
    case 115: *value = env_int("CS_STAND_IN_POOLS", 1); break; /* memory pools */
    default: *value = 1; break;
    }
    return SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, int device) {
    (void)device;
    if (len <= 0) return ERROR_INVALID_VALUE;
    strncpy(name, "Stand-in CUDA device", (size_t)len - 1);
    name[len - 1] = '\0';
    return SUCCESS;
}

static __thread void *current_context;

CUresult cuDevicePrimaryCtxRetain(void **context, int device) {
    (void)device;
    *context = &handle_storage;
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(int device) { (void)device; return SUCCESS; }
CUresult cuCtxSetCurrent(void *context) { current_context = context; return SUCCESS; }
CUresult cuCtxGetCurrent(void **context) { *context = current_context; return SUCCESS; }
CUresult cuCtxSynchronize(void) { return SUCCESS; }
CUresult cuCtxDestroy_v2(void *context) { (void)context; return SUCCESS; }
CUresult cuStreamCreate(void **stream, unsigned flags) {
    (void)flags;
    *stream = &handle_storage;
    return SUCCESS;
}
CUresult cuStreamDestroy_v2(void *stream) { (void)stream; return SUCCESS; }
CUresult cuStreamSynchronize(void *stream) { (void)stream; return SUCCESS; }
CUresult cuStreamWaitEvent(void *stream, void *event, unsigned flags) {
    (void)stream; (void)event; (void)flags;
    return SUCCESS;
}

/* "Device" memory is host memory, so that copies and memsets really move bytes. */
static CUresult allocate(CUdeviceptr *ptr, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) return ERROR_OUT_OF_MEMORY;
    *ptr = (CUdeviceptr)(uintptr_t)p;
    return SUCCESS;
}
CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t bytes) { return allocate(ptr, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr *ptr, size_t bytes, void *stream) {
    (void)stream;
    return allocate(ptr, bytes);
}
CUresult cuMemFree_v2(CUdeviceptr ptr) { free((void *)(uintptr_t)ptr); return SUCCESS; }
CUresult cuMemFreeAsync(CUdeviceptr ptr, void *stream) {
    (void)stream;
    free((void *)(uintptr_t)ptr);
    return SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, void *stream) {
    (void)stream;
    memset((void *)(uintptr_t)dst, value, n);
    return SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, void *stream) {
    (void)stream;
    memcpy((void *)(uintptr_t)dst, src, n);
    return SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, void *stream) {
    (void)stream;
    memcpy(dst, (const void *)(uintptr_t)src, n);
    return SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void *stream) {
    (void)stream;
    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
    return SUCCESS;
}

CUresult cuModuleLoadData(void **module, const void *image) {
    if (!image) return ERROR_INVALID_VALUE;
    *module = &handle_storage;
    return SUCCESS;
}
CUresult cuModuleUnload(void *module) { (void)module; return SUCCESS; }
CUresult cuModuleGetFunction(void **function, void *module, const char *name) {
    (void)module;
    if (!name || !*name) return ERROR_INVALID_VALUE;
    *function = &handle_storage;
    return SUCCESS;
}
CUresult cuFuncSetAttribute(void *function, int attribute, int value) {
    (void)function; (void)attribute; (void)value;
    return SUCCESS;
}
CUresult cuLaunchKernel(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned smem, void *stream, void **params,
                        void **extra) {
    (void)function; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)smem;
    (void)stream; (void)extra;
    return params ? SUCCESS : ERROR_INVALID_VALUE;
}

CUresult cuEventCreate(void **event, unsigned flags) {
    (void)flags;
    *event = &handle_storage;
    return SUCCESS;
}
CUresult cuEventRecord(void *event, void *stream) { (void)event; (void)stream; return SUCCESS; }
CUresult cuEventSynchronize(void *event) { (void)event; return SUCCESS; }
CUresult cuEventQuery(void *event) { (void)event; return SUCCESS; }
CUresult cuEventElapsedTime(float *ms, void *start, void *end) {
    (void)start; (void)end;
    *ms = 1.0f;
    return SUCCESS;
}
CUresult cuEventDestroy_v2(void *event) { (void)event; return SUCCESS; }
