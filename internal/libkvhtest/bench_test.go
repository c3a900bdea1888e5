package libkvhtest

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

func benchValues(t testing.TB, r Run) map[string]float64 {
	if r.Err != nil {
		t.Fatalf("%v\n%s", r.Err, r.Stderr)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(r.Stdout, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			v, err := strconv.ParseFloat(f[1], 64)
			if err == nil {
				m[f[0]] = v
			}
		}
	}
	return m
}

// BaseLib is the interposer as it was before issue 13 split kvh.c into one
// file a concept: the Makefile builds it from git at KVH_BASE (make bench
// does so first).
func BaseLib() string { return filepath.Join(Root(), "build", "lib", "libkvh-base.so") }

// BenchmarkInterposer measures libkvh's overhead per allocation and per free
// of a 256-byte buffer (so the memset itself is negligible), against the same
// client without libkvh in the same run, with no agent and with a listening
// one; and host zeroize-and-verify bandwidth through libkvh as a ratio to a
// plain memset of the same 64 MiB pinned buffer. Targets: <= 300 ns per
// alloc, <= 2 us per free.
//
// Each case also runs against BaseLib, interleaved with libkvh.so (the two
// take turns going first), and reports new/base: libkvh.so's overhead over
// the baseline's, per alloc and per free. Figures are medians over b.N.
func BenchmarkInterposer(b *testing.B) {
	if err := Build(); err != nil {
		b.Fatal(err)
	}
	if _, err := os.Stat(BaseLib()); err != nil {
		b.Fatalf("no baseline interposer to compare with (%v): make build/lib/libkvh-base.so builds it (make bench does)", err)
	}
	l, err := Listen(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	cases := []struct {
		name string
		env  []string
	}{
		{"noagent-verify-off", []string{"KVH_SOCKET=/nonexistent", "KVH_VERIFY=off"}},
		{"agent-verify-off", []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=off"}},
		{"agent-verify-sample", []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=sample"}},
		{"agent-verify-full", []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=full"}},
	}
	// Per case, one sample an iteration of each figure (overheads in ns);
	// medians are reported, so one run the rest of the machine disturbed does
	// not decide.
	type series struct{ alloc, free, baseAlloc, baseFree, zeroize []float64 }
	runs := make([]series, len(cases))
	for i := 0; i < b.N; i++ {
		plain := benchValues(b, Exec("bench", "", nil))
		for j, c := range cases {
			var v, base map[string]float64
			if i%2 == 0 {
				v = benchValues(b, Exec("bench", Lib(), c.env))
				base = benchValues(b, Exec("bench", BaseLib(), c.env))
			} else {
				base = benchValues(b, Exec("bench", BaseLib(), c.env))
				v = benchValues(b, Exec("bench", Lib(), c.env))
			}
			r := &runs[j]
			r.alloc = append(r.alloc, v["ALLOC_NS"]-plain["ALLOC_NS"])
			r.free = append(r.free, v["FREE_NS"]-plain["FREE_NS"])
			r.baseAlloc = append(r.baseAlloc, base["ALLOC_NS"]-plain["ALLOC_NS"])
			r.baseFree = append(r.baseFree, base["FREE_NS"]-plain["FREE_NS"])
			r.zeroize = append(r.zeroize, v["HOST_FREE_GBS"]/v["HOST_MEMSET_GBS"])
		}
	}
	for j, c := range cases {
		r := runs[j]
		b.ReportMetric(median(r.alloc), c.name+"-alloc-overhead-ns")
		b.ReportMetric(median(r.free), c.name+"-free-overhead-ns")
		b.ReportMetric(median(r.zeroize), c.name+"-host-zeroize/memset")
		b.ReportMetric(median(r.alloc)/median(r.baseAlloc), c.name+"-alloc-new/base")
		b.ReportMetric(median(r.free)/median(r.baseFree), c.name+"-free-new/base")
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
