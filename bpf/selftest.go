//go:build linux && cgo

package bpf

/*
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>

typedef int (*init_fn)(unsigned int);
typedef int (*gpa2_fn)(const char *, void **, int, unsigned long long, int *);
typedef int (*gpa1_fn)(const char *, void **, int, unsigned long long);

// resolve asks the library's own cuGetProcAddress for base and returns the
// exported symbol dladdr finds at that address (NULL when it is not one).
static const char *resolve(void *h, const char *base, void **out) {
  gpa2_fn g2 = (gpa2_fn)dlsym(h, "cuGetProcAddress_v2");
  gpa1_fn g1 = (gpa1_fn)dlsym(h, "cuGetProcAddress");
  void *p = NULL;
  int st = 0;
  if (g2) { if (g2(base, &p, 12000, 0, &st) != 0) p = NULL; }
  else if (g1) { if (g1(base, &p, 12000, 0) != 0) p = NULL; }
  *out = p;
  if (!p) return NULL;
  Dl_info info;
  if (!dladdr(p, &info) || info.dli_saddr != p) return NULL;
  return info.dli_sname;
}

static void *open_lib(const char *path) {
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (h) {
    init_fn i = (init_fn)dlsym(h, "cuInit");
    if (i) i(0);
  }
  return h;
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// probedDriver maps the names callers pass to cuGetProcAddress to the
// exported entry points the witness's uprobes sit on.
var probedDriver = map[string]string{
	"cuMemAlloc": "cuMemAlloc_v2", "cuMemAllocAsync": "cuMemAllocAsync", "cuMemCreate": "cuMemCreate",
	"cuMemMap": "cuMemMap", "cuMemHostAlloc": "cuMemHostAlloc", "cuMemAllocHost": "cuMemAllocHost_v2",
	"cuMemFree": "cuMemFree_v2", "cuMemFreeAsync": "cuMemFreeAsync", "cuMemUnmap": "cuMemUnmap",
	"cuMemRelease": "cuMemRelease", "cuMemFreeHost": "cuMemFreeHost", "cuMemHostUnregister": "cuMemHostUnregister",
}

// SelfTest loads the driver library at path and checks that its
// cuGetProcAddress hands out, for every probed function, the exported entry
// point the uprobe sits on (dladdr). A mismatch means callers that resolve
// through cuGetProcAddress would reach code the witness does not see. It
// returns one line per mismatch.
func SelfTest(path string) ([]string, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	h := C.open_lib(cpath)
	if h == nil {
		return nil, fmt.Errorf("dlopen %s: %s", path, C.GoString(C.dlerror()))
	}
	defer C.dlclose(h)
	var bad []string
	for base, want := range probedDriver {
		cb := C.CString(base)
		var p unsafe.Pointer
		name := C.resolve(h, cb, &p)
		C.free(unsafe.Pointer(cb))
		switch {
		case p == nil:
			// not offered at this version: nothing to probe
		case name == nil:
			bad = append(bad, fmt.Sprintf("cuGetProcAddress(%q) returns %p, which is not an exported entry point", base, p))
		case C.GoString(name) != want:
			bad = append(bad, fmt.Sprintf("cuGetProcAddress(%q) returns %s, the probes sit on %s", base, C.GoString(name), want))
		}
	}
	return bad, nil
}
