// Package realcudatest holds kvh against NVIDIA's real user-space libraries
// — the driver libcuda.so.1 (535, CUDA 12.2), the runtime libcudart 11.8 and
// nvcc/ptxas 11.8 — installed without a GPU by `make real-cuda`
// (scripts/install-real-cuda.sh). Without a device the driver still answers
// cuGetProcAddress, dlsym and every error path.
//
// With the real driver on the default library path, the fake-driver tests
// must still load the fake (fakepin_test.go).
//
// The tests fail, naming `make real-cuda`, when the real libraries are
// missing: they never skip. Tests build what they run in t.TempDir and hold
// no state between them.
package realcudatest
