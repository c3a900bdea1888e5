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
typedef struct CUmemPoolPtrExportData_st { unsigned char reserved[64]; } CUmemPoolPtrExportData;
typedef struct CUextMemory_st *CUexternalMemory;
typedef struct CUDA_EXTERNAL_MEMORY_BUFFER_DESC_st CUDA_EXTERNAL_MEMORY_BUFFER_DESC; /* only passed through */
typedef struct CUmemAllocationProp_st {
  int type, requestedHandleTypes;
  struct { int type, id; } location;
  void *win32HandleMetaData;
  struct { unsigned char compressionType, gpuDirectRDMACapable; unsigned short usage; unsigned char reserved[4]; } allocFlags;
} CUmemAllocationProp;
typedef int CUmemAllocationHandleType;
/* Graphs and stream capture (cuda.h 12.x layouts). */
typedef struct CUevent_st *CUevent;
#define CU_EVENT_DISABLE_TIMING 0x2
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphNode_st *CUgraphNode;
typedef struct CUgraphExec_st *CUgraphExec;
typedef int CUstreamCaptureStatus; /* 0 none, 1 active, 2 invalidated */
typedef int CUstreamCaptureMode;   /* 0 global, 1 thread local, 2 relaxed */
typedef struct CUDA_MEMSET_NODE_PARAMS_st {
  CUdeviceptr dst;
  size_t pitch;
  unsigned int value, elementSize;
  size_t width, height;
} CUDA_MEMSET_NODE_PARAMS;
typedef struct CUmemPoolProps_st {
  int allocType, handleTypes;
  struct { int type, id; } location;
  void *win32SecurityAttributes;
  size_t maxSize;
  unsigned char reserved[56];
} CUmemPoolProps;
typedef struct CUmemAccessDesc_st {
  struct { int type, id; } location;
  int flags;
} CUmemAccessDesc;
typedef struct CUDA_MEM_ALLOC_NODE_PARAMS_st {
  CUmemPoolProps poolProps;
  const CUmemAccessDesc *accessDescs;
  size_t accessDescCount;
  size_t bytesize;
  CUdeviceptr dptr; /* out */
} CUDA_MEM_ALLOC_NODE_PARAMS;
/* cuGraphAddNode's parameter block (CUDA 12.2): 256 bytes, the node's
 * parameters at offset 16 (only the kinds kvh and the fake read are named). */
typedef struct CUgraphNodeParams_st {
  int type; /* CU_GRAPH_NODE_TYPE_* */
  int reserved0[3];
  union {
    long long reserved1[29];
    struct {
      CUDA_MEMSET_NODE_PARAMS p;
      CUcontext ctx;
    } memset; /* CUDA_MEMSET_NODE_PARAMS_v2 */
    CUDA_MEM_ALLOC_NODE_PARAMS alloc; /* _v2: the same layout */
    struct { CUdeviceptr dptr; } free;
  };
  long long reserved2;
} CUgraphNodeParams;
_Static_assert(sizeof(CUgraphNodeParams) == 256, "CUgraphNodeParams is 256 bytes in cuda.h");
#define CU_GRAPH_NODE_TYPE_MEMSET 2
#define CU_GRAPH_NODE_TYPE_GRAPH 4
#define CU_GRAPH_NODE_TYPE_EMPTY 5
#define CU_GRAPH_NODE_TYPE_MEM_ALLOC 10
#define CU_GRAPH_NODE_TYPE_MEM_FREE 11
/* cuGraphInstantiateWithParams's parameter block (CUDA 12.0). */
typedef struct CUDA_GRAPH_INSTANTIATE_PARAMS_st {
  cuuint64_t flags;
  CUstream hUploadStream;
  CUgraphNode hErrNode_out;
  int result_out;
} CUDA_GRAPH_INSTANTIATE_PARAMS;
#define CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH 1
typedef int CUdriverProcAddressQueryResult;
typedef int cudaDriverEntryPointQueryResult;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_NOT_PERMITTED 800
#define CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED 900
#define CUDA_ERROR_STREAM_CAPTURE_INVALIDATED 901
#define CU_STREAM_CAPTURE_STATUS_NONE 0
#define CU_STREAM_CAPTURE_STATUS_ACTIVE 1
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
