// Package realcudatest holds kvh against NVIDIA's real user-space libraries
// — the driver libcuda.so.1 (535, CUDA 12.2), the runtime libcudart 11.8 and
// nvcc/ptxas 11.8 — installed without a GPU by `make real-cuda`
// (scripts/install-real-cuda.sh). Without a device the driver still answers
// cuGetProcAddress, dlsym and every error path, and the runtime still fetches
// its entry points, which is what these tests ask of them:
//
//   - the real driver's allocation and release family against the README's
//     table and interpose/hooks.def (classify_test.go);
//   - the fake driver (testdata/fakecuda) against the real one, on the same
//     questions, without libkvh (abi_test.go, testdata/realcuda/abi.c);
//   - the real runtime, built with nvcc and gcc, traced by an LD_AUDIT library
//     (testdata/realcuda/gpa_audit.c) with and without libkvh
//     (runtime_test.go, testdata/realcuda/runtime.c);
//   - libkvh's embedded verify kernel through ptxas for sm_70, sm_80 and
//     sm_90, warnings as errors (ptx_test.go; make ptx-check);
//   - make gpu-check building with the real nvcc, and stopping without a
//     device (gpucheck_test.go);
//   - the fake-driver tests still loading the fake now that the real driver is
//     on the default library path (fakepin_test.go).
//
// The tests fail, naming `make real-cuda`, when the real libraries are
// missing: they never skip. Known differences and gaps are listed in named
// tables in the tests; a new one fails, and so does an entry that no longer
// happens (delete it). Tests build their C programs in t.TempDir and hold no
// state between them.
package realcudatest
