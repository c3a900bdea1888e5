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

// resolve asks the library's own cuGetProcAddress (v2 when which is 2, v1
// when 1) for base at version ver with flags, and returns the exported symbol
// dladdr finds at that address (NULL when it is not one). *out is the
// pointer, NULL when the resolver offers none.
static const char *resolve(void *h, int which, const char *base, int ver, unsigned long long flags, void **out) {
  void *p = NULL;
  int st = 0;
  *out = NULL;
  if (which == 2) {
    gpa2_fn g2 = (gpa2_fn)dlsym(h, "cuGetProcAddress_v2");
    if (!g2 || g2(base, &p, ver, flags, &st) != 0 || st != 0) p = NULL;
  } else {
    gpa1_fn g1 = (gpa1_fn)dlsym(h, "cuGetProcAddress");
    if (!g1 || g1(base, &p, ver, flags) != 0) p = NULL;
  }
  *out = p;
  if (!p) return NULL;
  Dl_info info;
  if (!dladdr(p, &info) || info.dli_saddr != p) return NULL;
  return info.dli_sname;
}

static int has(void *h, const char *name) { return dlsym(h, name) != NULL; }

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
	"errors"
	"fmt"
	"slices"
	"strings"
	"unsafe"
)

// ErrNotTestable means the library has no resolver to test (a runtime such
// as libcudart has no cuGetProcAddress), or its resolver offered none of
// the probed functions: nothing was established, so nothing passed.
var ErrNotTestable = errors.New("witness self-test: not testable")

// selfTestBases are the names callers pass to cuGetProcAddress for every
// driver function the probes sit on (enum fn in kvh.bpf.c).
var selfTestBases = []string{
	"cuMemAlloc", "cuMemAllocPitch", "cuMemAllocManaged", "cuMemAllocHost", "cuMemHostAlloc", "cuMemAllocAsync",
	"cuMemAllocFromPoolAsync", "cuMemCreate", "cuMemMap", "cuMemFree", "cuMemFreeAsync", "cuMemFreeHost",
	"cuMemHostRegister", "cuMemHostUnregister", "cuMemUnmap", "cuMemRelease", "cuIpcOpenMemHandle", "cuIpcCloseMemHandle",
}

// The versions and flags real runtimes and frameworks ask at: old versions
// get the v1 entry points (cuMemAlloc at 2000 and 3010, cuMemHostRegister at
// 4000–6040, cuIpcOpenMemHandle at 4010–10020), flag 2
// (CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) the _ptsz variants.
var (
	selfTestVersions = []int{2000, 3010, 3020, 4000, 4010, 6000, 6050, 10000, 11000, 11020, 11080, 12000, 12020}
	selfTestFlags    = []uint64{0, 2}
)

// probedDriverFns is the set of driver entry points with a probe.
func probedDriverFns() map[string]bool {
	out := map[string]bool{}
	for _, n := range fnNames {
		if !strings.HasPrefix(n, "cuda") {
			out[n] = true
		}
	}
	return out
}

// SelfTest loads the driver library at path and checks that its
// cuGetProcAddress (and cuGetProcAddress_v2 where it has one) hands out, for
// every probed function at every version and flag in the lists above, an
// exported entry point a uprobe sits on (dladdr). A mismatch means callers
// that resolve through cuGetProcAddress would reach code the witness does
// not see. It returns one line per distinct mismatch, naming the versions
// and flags. A library it cannot test is ErrNotTestable, never a pass.
func SelfTest(path string) ([]string, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	h := C.open_lib(cpath)
	if h == nil {
		return nil, fmt.Errorf("dlopen %s: %s", path, C.GoString(C.dlerror()))
	}
	defer C.dlclose(h)
	var resolvers []C.int
	for _, r := range []struct {
		which C.int
		name  string
	}{{1, "cuGetProcAddress"}, {2, "cuGetProcAddress_v2"}} {
		cn := C.CString(r.name)
		if C.has(h, cn) != 0 {
			resolvers = append(resolvers, r.which)
		}
		C.free(unsafe.Pointer(cn))
	}
	if len(resolvers) == 0 {
		return nil, fmt.Errorf("%w: %s has no cuGetProcAddress (a runtime, not a driver?)", ErrNotTestable, path)
	}
	probed := probedDriverFns()
	type at struct {
		which C.int
		ver   int
		flags uint64
	}
	problems := map[string][]at{}
	answered := 0
	for _, base := range selfTestBases {
		cb := C.CString(base)
		for _, which := range resolvers {
			for _, ver := range selfTestVersions {
				for _, fl := range selfTestFlags {
					var p unsafe.Pointer
					name := C.resolve(h, which, cb, C.int(ver), C.ulonglong(fl), &p)
					var problem string
					switch {
					case p == nil:
						continue // not offered at this version: nothing to probe
					case name == nil:
						problem = fmt.Sprintf("cuGetProcAddress(%q) returns a pointer that is not an exported entry point", base)
					case !probed[C.GoString(name)]:
						problem = fmt.Sprintf("cuGetProcAddress(%q) returns %s, which has no probe", base, C.GoString(name))
					}
					answered++
					if problem != "" {
						problems[problem] = append(problems[problem], at{which, ver, fl})
					}
				}
			}
		}
		C.free(unsafe.Pointer(cb))
	}
	if answered == 0 {
		return nil, fmt.Errorf("%w: the resolver of %s offered none of the probed functions", ErrNotTestable, path)
	}
	var bad []string
	for problem, ats := range problems {
		var where []string
		for _, a := range ats {
			v := "v2"
			if a.which == 1 {
				v = "v1"
			}
			where = append(where, fmt.Sprintf("%s@%d/%d", v, a.ver, a.flags))
		}
		bad = append(bad, fmt.Sprintf("%s (resolver@version/flags: %s)", problem, strings.Join(where, " ")))
	}
	slices.Sort(bad)
	return bad, nil
}
