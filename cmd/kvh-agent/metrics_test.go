package main

import (
	"bytes"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/action"
	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/gpu"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/ship"
	"github.com/kvhygiene/kvh/violation"
	"github.com/minio/minio-go/v7"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

type fakeTrail struct{}

func (fakeTrail) Stats() forensic.Stats { return forensic.Stats{Records: 42, CheckpointSize: 40} }
func (fakeTrail) Err() error            { return nil }

type fakeWitness struct{}

func (fakeWitness) Lost() uint64       { return 3 }
func (fakeWitness) Attached() []string { return []string{"a", "b"} }

// The agent's own series (not the Go runtime's, not the ledger's, which
// tracer pins) are pinned by a golden exposition: names, help, types,
// labels, and the pre-initialised label values.
func TestAgentMetricsGolden(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	am := newAgentMetrics(reg, fakeTrail{}, "go-test")
	am.posture(gpu.Posture{ScrubOnFree: 1}, []gpu.Device{{UUID: "GPU-1", MIG: true}})
	registerWitnessMetrics(reg, fakeWitness{})
	ingest.NewMetrics(reg)
	action.NewMetrics(reg, func() float64 { return 0 })
	q := violation.NewQueue(1)
	if _, err := ingest.NewCorrelator(ingest.CorrelatorConfig{Window: time.Second, Covered: func(int) bool { return false }, Violations: q}, reg); err != nil {
		t.Fatal(err)
	}
	// The shipper's series (--ship-to), with a client that is never used.
	c, err := minio.New("127.0.0.1:1", &minio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ship.New(ship.Config{TrailDir: t.TempDir(), Node: ship.Location{Bucket: "b", Prefix: "n"}, Client: c,
		Retention: func() time.Duration { return time.Hour }, Metrics: ship.NewMetrics(reg)}); err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/metrics.prom"
	if *update {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		for _, mf := range mfs {
			if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
				t.Fatal(err)
			}
		}
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test -run AgentMetricsGolden -update)", err)
	}
	if err := testutil.GatherAndCompare(reg, bytes.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
