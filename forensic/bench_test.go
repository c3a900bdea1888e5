package forensic

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// BenchmarkAppendDurable measures acknowledged (fdatasync'ed and
// checkpoint-signed) records per second with P concurrent producers.
func BenchmarkAppendDurable(b *testing.B) {
	k := newKeys(b, "kvh-bench")
	body := []byte(`{"ev":"free","tenant":"tenant-a","request":"req-000123","bytes":2097152,"coverage_pct":100,"method":"memset+full"}`)
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
