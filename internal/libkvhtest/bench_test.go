package libkvhtest

import (
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

// BenchmarkInterposer measures libkvh's overhead per allocation and per free
// of a 256-byte buffer (so the memset itself is negligible), against the same
// client without libkvh in the same run, with no agent and with a listening
// one; and host zeroize-and-verify bandwidth through libkvh as a ratio to a
// plain memset of the same 64 MiB pinned buffer. Targets: <= 300 ns per
// alloc, <= 2 us per free.
func BenchmarkInterposer(b *testing.B) {
	if err := Build(); err != nil {
		b.Fatal(err)
	}
	l, err := Listen(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < b.N; i++ {
		base := benchValues(b, Exec("bench", "", nil))
		for _, c := range []struct {
			name string
			env  []string
		}{
			{"noagent-verify-off", []string{"KVH_SOCKET=/nonexistent", "KVH_VERIFY=off"}},
			{"agent-verify-off", []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=off"}},
			{"agent-verify-sample", []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=sample"}},
			{"agent-verify-full", []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=full"}},
		} {
			v := benchValues(b, Exec("bench", Lib(), c.env))
			b.ReportMetric(v["ALLOC_NS"]-base["ALLOC_NS"], c.name+"-alloc-overhead-ns")
			b.ReportMetric(v["FREE_NS"]-base["FREE_NS"], c.name+"-free-overhead-ns")
			b.ReportMetric(v["HOST_FREE_GBS"]/v["HOST_MEMSET_GBS"], c.name+"-host-zeroize/memset")
		}
	}
}
