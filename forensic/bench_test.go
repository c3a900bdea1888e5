package forensic

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkAppendDurable measures acknowledged (fdatasync'ed and
// checkpoint-signed) records per second with P concurrent producers.
func BenchmarkAppendDurable(b *testing.B) {
	k := newKeys(b, "kvh-bench")
	body := []byte(`{"ev":"free","tenant":"tenant-a","request":"req-000123","bytes":2097152,"coverage_pct":100,"method":"memset+full"}`)
	// The reference, in the same run: the seed's ForensicLogger.append (no
	// fsync at all) with HMAC, 256 threads, the same record body.
	seed := seedRef(b, b.TempDir(), "append", ".", "100000", "256", string(body))["appends_per_s"]
	for _, producers := range []int{1, 64, 256} {
		for _, mac := range []bool{false, true} {
			name := fmt.Sprintf("producers=%d/mac=%v", producers, mac)
			b.Run(name, func(b *testing.B) {
				var key []byte
				if mac {
					key = testMAC
				}
				l, err := Open(b.TempDir(), Options{Signer: k.signer, MACKey: key})
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(len(body)))
				start := time.Now()
				var wg sync.WaitGroup
				per := b.N / producers
				rest := b.N - per*producers
				for p := 0; p < producers; p++ {
					n := per
					if p < rest {
						n++
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; i < n; i++ {
							if _, err := l.Append(body); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				el := time.Since(start)
				st := l.Stats()
				l.Close()
				b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
				b.ReportMetric(float64(b.N)/float64(max(st.Commits, 1)), "records/commit")
				b.ReportMetric(seed, "seed-records/s")
				b.ReportMetric(float64(b.N)/el.Seconds()/seed, "x-seed")
			})
		}
	}
}

// BenchmarkVerify measures verification throughput of a 200k-record trail.
func BenchmarkVerify(b *testing.B) {
	k := newKeys(b, "kvh-bench")
	for _, mac := range []bool{false, true} {
		b.Run(fmt.Sprintf("mac=%v", mac), func(b *testing.B) {
			var key []byte
			if mac {
				key = testMAC
			}
			dir := b.TempDir()
			l, err := Open(dir, Options{Signer: k.signer, MACKey: key, MaxSegmentBytes: 16 << 20})
			if err != nil {
				b.Fatal(err)
			}
			const N = 200_000
			body := []byte(`{"ev":"free","tenant":"tenant-a","request":"req-000123","bytes":2097152,"coverage_pct":100,"method":"memset+full"}`)
			var wg sync.WaitGroup
			for p := 0; p < 256; p++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < N/256; i++ {
						l.Append(body)
					}
				}()
			}
			wg.Wait()
			l.Close()
			var size int64
			segs, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
			for _, s := range segs {
				st, _ := os.Stat(s)
				size += st.Size()
			}
			// The machine's hashing limit, in the same run: one SHA-256 of
			// every line of the same trail, read from the same files, on one
			// core. Verifying hashes each line at least twice (leaf, MAC).
			hashRate := hashLimit(b, segs)
			b.SetBytes(size)
			b.ResetTimer()
			var rep *Report
			for i := 0; i < b.N; i++ {
				rep, err = Verify(dir, VerifyOptions{Verifier: k.verifier, MACKey: key})
				if err != nil || !rep.OK {
					b.Fatal(err, rep.Problem)
				}
			}
			rate := float64(rep.Records) * float64(b.N) / b.Elapsed().Seconds()
			cores := runtime.GOMAXPROCS(0)
			b.ReportMetric(rate, "records/s")
			b.ReportMetric(rate/float64(cores), "records/s/core")
			b.ReportMetric(hashRate, "sha256-lines/s/core")
			b.ReportMetric(rate/float64(cores)/hashRate, "x-sha256/core")
			b.ReportMetric(float64(rep.Checkpoints), "checkpoints")
			b.ReportMetric(float64(len(segs)), "segments")
		})
	}
}

// hashLimit reads every line of the files and SHA-256s each once on one
// goroutine, returning lines per second (best of three).
func hashLimit(b *testing.B, files []string) float64 {
	var data [][]byte
	for _, f := range files {
		d, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		data = append(data, d)
	}
	best := 0.0
	for range 3 {
		start := time.Now()
		lines := 0
		for _, d := range data {
			f, _ := os.Open(os.DevNull) // the verifier opens each file too
			f.Close()
			for len(d) > 0 {
				nl := bytes.IndexByte(d, '\n')
				if nl < 0 {
					break
				}
				sum := sha256.Sum256(d[:nl])
				sink ^= sum[0]
				d = d[nl+1:]
				lines++
			}
		}
		best = max(best, float64(lines)/time.Since(start).Seconds())
	}
	return best
}

var sink byte

// seedRef runs the seed's own code (testdata/seed/seedref.py, a faithful
// copy of its ForensicLogger) with the HMAC key in FORENSIC_HMAC_SECRET, as
// the seed reads it, and returns the figures it prints.
func seedRef(b *testing.B, dir string, args ...string) map[string]float64 {
	b.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		b.Fatal("python3 runs the seed's code, the reference these figures are measured against: install it (make deps)")
	}
	script, _ := filepath.Abs("testdata/seed/seedref.py")
	cmd := exec.Command(py, append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "FORENSIC_HMAC_SECRET="+string(testMAC))
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("seed reference %v: %v\n%s", args, err, out)
	}
	f := strings.Fields(string(out))
	m := map[string]float64{}
	for i := 0; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i+1], 64)
		if err != nil {
			b.Fatalf("seed reference %v printed %q", args, out)
		}
		m[f[i]] = v
	}
	return m
}

// BenchmarkVerifySeed verifies a 60k-line HMAC'd log written by the seed's
// code, against the seed's own verify_chain on the same file in the same run.
func BenchmarkVerifySeed(b *testing.B) {
	dir := b.TempDir()
	log := filepath.Join(dir, "kv_cache.log")
	w := seedRef(b, dir, "write", log, "60000")
	ref := seedRef(b, dir, "verify", log)
	if ref["ok"] != 1 || ref["lines"] != 60000 {
		b.Fatalf("the seed's verify_chain says %v", ref)
	}
	b.SetBytes(int64(w["bytes"]))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep, err := VerifySeed(log, testMAC)
		if err != nil || !rep.OK || rep.Files[0].Lines != 60000 {
			b.Fatal(err, rep)
		}
	}
	rate := 60000 * float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(rate, "lines/s")
	b.ReportMetric(ref["lines_per_s"], "seed-lines/s")
	b.ReportMetric(rate/ref["lines_per_s"], "x-seed")
}
