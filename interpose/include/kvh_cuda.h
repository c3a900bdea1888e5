/* Minimal CUDA 12 driver/runtime types and constants, shared by libkvh.so,
 * the fake CUDA libraries and the test clients. No function prototypes:
 * libkvh.so declares its wrappers from hooks.def, and the fakes and clients
 * declare what they define or call. Names and values follow cuda.h and
 * cuda_runtime_api.h of CUDA 12 (64-bit); nothing here is NVIDIA code. */
#ifndef KVH_CUDA_MIN_H
#define KVH_CUDA_MIN_H
#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
typedef int cudaError_t;
typedef unsigned long long CUdeviceptr;
/* The v1 (pre-3.2) ABI's device pointer: 32 bits, as cuda.h's CUdeviceptr_v1. */
typedef unsigned int CUdeviceptr_v1;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUstream_st *cudaStream_t;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef unsigned long long cuuint64_t;
typedef struct CUipcMemHandle_st { char reserved[64]; } CUipcMemHandle;
typedef struct CUmemAllocationProp_st {
  int type, requestedHandleTypes;
  struct { int type, id; } location;
  void *win32HandleMetaData;
  struct { unsigned char compressionType, gpuDirectRDMACapable; unsigned short usage; unsigned char reserved[4]; } allocFlags;
} CUmemAllocationProp;
typedef int CUmemAllocationHandleType;
typedef int CUdriverProcAddressQueryResult;
typedef int cudaDriverEntryPointQueryResult;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_NOT_PERMITTED 800
#define CU_GET_PROC_ADDRESS_DEFAULT 0
#define CU_GET_PROC_ADDRESS_LEGACY_STREAM 1
#define CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM 2
#define CU_GET_PROC_ADDRESS_SUCCESS 0
#define CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND 1
#define CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT 2
#define cudaSuccess 0
#define cudaErrorMemoryAllocation 2
#define cudaErrorNotPermitted 800
#define cudaEnableDefault 0

#endif
