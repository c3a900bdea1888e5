package forensic

import (
	"fmt"
	"os"
	"path/filepath"
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
			b.SetBytes(size)
			b.ResetTimer()
			var rep *Report
			for i := 0; i < b.N; i++ {
				rep, err = Verify(dir, VerifyOptions{Verifier: k.verifier, MACKey: key})
				if err != nil || !rep.OK {
					b.Fatal(err, rep.Problem)
				}
			}
			b.ReportMetric(float64(rep.Records)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64(rep.Checkpoints), "checkpoints")
		})
	}
}
