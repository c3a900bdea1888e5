package ship_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/internal/s3test"
	"github.com/kvhygiene/kvh/ship"
	"github.com/kvhygiene/kvh/violation"
	"github.com/minio/minio-go/v7"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/mod/sumdb/note"
)

type keys struct {
	signer   note.Signer
	verifier note.Verifier
}

func newKeys(t *testing.T, name string) keys {
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	return keys{s, v}
}

func newKeysB(b *testing.B) keys {
	skey, vkey, err := note.GenerateKey(rand.Reader, "bench")
	if err != nil {
		b.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	return keys{s, v}
}

func forensicOpen(dir string, k keys, segBytes int64) (*forensic.Log, error) {
	return forensic.Open(dir, forensic.Options{Signer: k.signer, Origin: "kvh/bench", MaxSegmentBytes: segBytes, TickInterval: -1})
}

func openTrail(t *testing.T, dir string, k keys) *forensic.Log {
	t.Helper()
	l, err := forensic.Open(dir, forensic.Options{Signer: k.signer, Origin: "kvh/test/" + filepath.Base(dir), MaxSegmentBytes: 2048, TickInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func appendN(t *testing.T, l *forensic.Log, n int, tag string) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := l.AppendAsync(map[string]any{"ev": "free", "tenant": tag, "i": i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
}

type sink struct {
	mu sync.Mutex
	vs []violation.Violation
}

func (s *sink) Emit(v violation.Violation) { s.mu.Lock(); s.vs = append(s.vs, v); s.mu.Unlock() }
func (s *sink) all() []violation.Violation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]violation.Violation(nil), s.vs...)
}

func client(t *testing.T, srv *s3test.Server) *minio.Client {
	t.Helper()
	srv.Env(t)
	c, err := ship.Endpoint{Host: srv.Addr, Insecure: true, Region: "us-east-1"}.Client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newShipper(t *testing.T, dir string, c *minio.Client, node ship.Location, cfg ship.Config) *ship.Shipper {
	t.Helper()
	cfg.TrailDir, cfg.Client, cfg.Node = dir, c, node
	cfg.Retention = func() time.Duration { return 24 * time.Hour }
	cfg.Log = hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Warn})
	cfg.OpTimeout = 5 * time.Second
	s, err := ship.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// versions lists every object version under prefix.
func versions(t *testing.T, c *minio.Client, bucket, prefix string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for o := range c.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true, WithVersions: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		out[o.Key]++
	}
	return out
}

// sameAsBucket fetches node and checks every local trail file is byte for
// byte what the bucket holds, and that the fetched trail verifies.
func sameAsBucket(t *testing.T, c *minio.Client, node ship.Location, dir string, k keys) *forensic.Report {
	t.Helper()
	got := t.TempDir()
	f, err := ship.Fetch(context.Background(), c, node, got)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Problems) > 0 {
		t.Fatalf("problems in the bucket: %q", f.Problems)
	}
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".jsonl") {
			continue
		}
		n++
		want, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		have, err := os.ReadFile(filepath.Join(got, e.Name()))
		if err != nil || !bytes.Equal(want, have) {
			t.Fatalf("%s: bucket copy (%d bytes, %v) differs from the node's (%d bytes)", e.Name(), len(have), err, len(want))
		}
	}
	if n < 3 {
		t.Fatalf("only %d trail files: the test wants rotated segments", n)
	}
	rep, err := forensic.Verify(got, forensic.VerifyOptions{Verifier: k.verifier, External: f.External})
	if err != nil || !rep.OK {
		t.Fatalf("the shipped trail does not verify: %v %+v", err, rep.Problem)
	}
	if rep.ExternalCheckpoints == 0 {
		t.Fatal("no off-node checkpoint matched")
	}
	return rep
}

// Shipping survives an agent restart and a server outage: the backlog
// drains, nothing is lost, nothing is duplicated, and the outage is a
// shipping_backlog violation once it lasts past the limit.
func TestShipSurvivesRestartAndOutage(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	c := client(t, srv)
	node := ship.Location{Bucket: "trails", Prefix: "fleet/node-a"}
	dir := filepath.Join(t.TempDir(), "trail")
	k := newKeys(t, "node-a")
	ctx := context.Background()

	l := openTrail(t, dir, k)
	appendN(t, l, 40, "a")
	s := newShipper(t, dir, c, node, ship.Config{})
	if err := s.Round(ctx); err != nil {
		t.Fatal(err)
	}
	first := s.Stats()
	if first.Objects == 0 || first.LastShippedSeq < 40 {
		t.Fatalf("first round: %+v", first)
	}
	// The agent stops: the trail closes, a final round ships the close.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Round(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, ship.StateDir, "state.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", st.Mode(), err)
	}

	// The agent starts again: a new shipper resumes from the state.
	l = openTrail(t, dir, k)
	appendN(t, l, 30, "b")
	reg := prometheus.NewRegistry()
	viol := &sink{}
	s = newShipper(t, dir, c, node, ship.Config{Interval: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, MaxBacklogAge: 300 * time.Millisecond,
		Violations: viol, Metrics: ship.NewMetrics(reg)})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()
	waitFor(t, "the restart's records to ship", func() bool { return s.Stats().LastShippedSeq >= 72 && s.Stats().BacklogBytes == 0 })

	// The server goes away; the trail goes on.
	srv.Stop()
	appendN(t, l, 60, "c")
	waitFor(t, "failed rounds and a backlog", func() bool { st := s.Stats(); return st.Errors > 0 && st.BacklogBytes > 0 })
	waitFor(t, "a shipping_backlog violation", func() bool { return len(viol.all()) > 0 })
	if v := viol.all()[0]; v.Kind != violation.ShippingBacklog || v.PID != 0 || !strings.Contains(v.Detail, "s3://trails/fleet/node-a") {
		t.Fatalf("violation %+v", v)
	}
	if age := testutil.ToFloat64(prometheusGauge(t, reg, "kvh_ship_oldest_unshipped_age_seconds")); age <= 0 {
		t.Fatalf("oldest_unshipped_age_seconds = %v during the outage", age)
	}
	if b := testutil.ToFloat64(prometheusGauge(t, reg, "kvh_ship_backlog_bytes")); b <= 0 {
		t.Fatalf("backlog_bytes = %v during the outage", b)
	}
	srv.Restart()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the backlog to drain", func() bool { st := s.Stats(); return st.BacklogBytes == 0 && st.OldestUnshipped == 0 })
	if n := len(viol.all()); n != 1 {
		t.Fatalf("%d violations for one outage", n)
	}
	stop()
	<-done

	rep := sameAsBucket(t, c, node, dir, k)
	local, err := forensic.Verify(dir, forensic.VerifyOptions{Verifier: k.verifier})
	if err != nil || !local.OK || rep.Records != local.Records {
		t.Fatalf("bucket has %d records, node %d (%v)", rep.Records, local.Records, err)
	}
	for key, n := range versions(t, c, "trails", "fleet/node-a/") {
		if n != 1 {
			t.Errorf("%s has %d versions: shipped twice", key, n)
		}
	}
	if seq := testutil.ToFloat64(prometheusGauge(t, reg, "kvh_ship_last_shipped_seq")); uint64(seq) != local.FirstSeq+local.Records-1 {
		t.Fatalf("last_shipped_seq %v, trail ends at %d", seq, local.FirstSeq+local.Records-1)
	}
}

func prometheusGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return gaugeValue(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

func gaugeValue(v float64) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "v"})
	g.Set(v)
	return g
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A shipped object is locked in compliance mode: it cannot be deleted, even
// with governance bypass, and a second write to its key is a new version
// that the verifier names while it reads the original.
func TestShippedObjectsAreLocked(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	c := client(t, srv)
	node := ship.Location{Bucket: "trails", Prefix: "node-b"}
	dir := filepath.Join(t.TempDir(), "trail")
	k := newKeys(t, "node-b")
	l := openTrail(t, dir, k)
	appendN(t, l, 40, "a")
	l.Close()
	ctx := context.Background()
	if err := newShipper(t, dir, c, node, ship.Config{}).Round(ctx); err != nil {
		t.Fatal(err)
	}
	key := "node-b/seg-000000.jsonl/g1/00000000000000000000"
	info, err := c.StatObject(ctx, "trails", key, minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m := info.Metadata.Get("X-Amz-Object-Lock-Mode"); m != "COMPLIANCE" {
		t.Fatalf("lock mode %q, want COMPLIANCE", m)
	}
	until, err := time.Parse(time.RFC3339, info.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date"))
	if err != nil || until.Before(time.Now().Add(23*time.Hour)) {
		t.Fatalf("retain until %v (%v), want about a day from now", until, err)
	}
	orig, _ := os.ReadFile(filepath.Join(dir, "seg-000000.jsonl"))
	for _, bypass := range []bool{false, true} {
		err := c.RemoveObject(ctx, "trails", key, minio.RemoveObjectOptions{VersionID: info.VersionID, GovernanceBypass: bypass})
		if err == nil {
			t.Fatalf("a locked version was deleted (governance bypass %v)", bypass)
		}
	}
	forged := bytes.Replace(orig[:info.Size], []byte(`"tenant":"a"`), []byte(`"tenant":"z"`), 1)
	if _, err := c.PutObject(ctx, "trails", key, bytes.NewReader(forged), int64(len(forged)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("a second version (which S3 allows) was refused: %v", err)
	}
	o, err := c.GetObject(ctx, "trails", key, minio.GetObjectOptions{VersionID: info.VersionID})
	if err != nil {
		t.Fatal(err)
	}
	b := new(bytes.Buffer)
	if _, err := b.ReadFrom(o); err != nil || !bytes.Equal(b.Bytes(), orig[:info.Size]) {
		t.Fatalf("the locked version changed: %v", err)
	}
	f, err := ship.Fetch(ctx, c, node, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Problems) != 1 || !strings.Contains(f.Problems[0], key+": overwritten after it was shipped") {
		t.Fatalf("problems %q", f.Problems)
	}
}

// A bucket without Object Lock is refused: shipped trails there could be
// deleted.
func TestBucketWithoutLockRefused(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "plain", false)
	c := client(t, srv)
	dir := filepath.Join(t.TempDir(), "trail")
	l := openTrail(t, dir, newKeys(t, "n"))
	appendN(t, l, 3, "a")
	l.Close()
	err := newShipper(t, dir, c, ship.Location{Bucket: "plain", Prefix: "n"}, ship.Config{}).Round(context.Background())
	if !errors.Is(err, ship.ErrNoObjectLock) {
		t.Fatalf("round on a bucket without Object Lock: %v", err)
	}
	if n := len(versions(t, c, "plain", "")); n != 0 {
		t.Fatalf("%d objects written to an unlocked bucket", n)
	}
}

// Root on the node truncates the trail and deletes its checkpoints, then
// lets the agent go on: the shipper ships the changed files as a new
// generation, and the shipped trail fails against the older generation's
// checkpoint.
func TestTruncationAndCheckpointDeletionCaught(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	c := client(t, srv)
	node := ship.Location{Bucket: "trails", Prefix: "node-c"}
	dir := filepath.Join(t.TempDir(), "trail")
	k := newKeys(t, "node-c")
	l := openTrail(t, dir, k)
	appendN(t, l, 40, "a")
	l.Close()
	ctx := context.Background()
	s := newShipper(t, dir, c, node, ship.Config{})
	if err := s.Round(ctx); err != nil {
		t.Fatal(err)
	}
	truncateLastSegment(t, dir)
	l = openTrail(t, dir, k) // no checkpoint left to contradict it
	appendN(t, l, 2, "after")
	l.Close()
	if rep, _ := forensic.Verify(dir, forensic.VerifyOptions{Verifier: k.verifier}); !rep.OK {
		t.Fatalf("precondition: the truncated trail should verify on the node alone: %+v", rep.Problem)
	}
	if err := s.Round(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Stats().Generations < 2 {
		t.Fatalf("generations %d, want the segment and the checkpoints", s.Stats().Generations)
	}
	got := t.TempDir()
	f, err := ship.Fetch(ctx, c, node, got)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.External) != 2 || len(f.Notes) < 2 {
		t.Fatalf("external %d, notes %q", len(f.External), f.Notes)
	}
	rep, err := forensic.Verify(got, forensic.VerifyOptions{Verifier: k.verifier, External: f.External})
	if err != nil || rep.OK {
		t.Fatalf("the shipped trail verified after truncation: %v %+v", err, rep)
	}
	t.Logf("caught: %s", rep.Problem)
}

// truncateLastSegment cuts the last segment's last five lines (its close
// record and four records) and deletes checkpoints.jsonl.
func truncateLastSegment(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	last := ""
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "seg-") {
			last = e.Name()
		}
	}
	p := filepath.Join(dir, last)
	b, _ := os.ReadFile(p)
	lines := bytes.SplitAfter(b, []byte("\n"))
	lines = lines[:len(lines)-1] // the empty tail after the last newline
	if len(lines) < 7 {
		t.Fatalf("%s has %d lines", last, len(lines))
	}
	if err := os.WriteFile(p, bytes.Join(lines[:len(lines)-5], nil), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "checkpoints.jsonl")); err != nil {
		t.Fatal(err)
	}
}

// A crash that loses the state after uploads (here: the state file is
// deleted) sends nothing twice: the next run asks for each chunk and takes
// the ones already there, even where the trail has grown since and its cuts
// fall elsewhere.
func TestLostStateShipsNothingTwice(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	c := client(t, srv)
	node := ship.Location{Bucket: "trails", Prefix: "node-d"}
	dir := filepath.Join(t.TempDir(), "trail")
	k := newKeys(t, "node-d")
	l := openTrail(t, dir, k)
	appendN(t, l, 30, "a")
	ctx := context.Background()
	if err := newShipper(t, dir, c, node, ship.Config{}).Round(ctx); err != nil {
		t.Fatal(err)
	}
	before := versions(t, c, "trails", "node-d/")
	appendN(t, l, 30, "b") // the open segment grows: its next cut differs
	l.Close()
	if err := os.RemoveAll(filepath.Join(dir, ship.StateDir)); err != nil {
		t.Fatal(err)
	}
	s := newShipper(t, dir, c, node, ship.Config{})
	if err := s.Round(ctx); err != nil {
		t.Fatal(err)
	}
	after := versions(t, c, "trails", "node-d/")
	for key, n := range after {
		if n != 1 {
			t.Errorf("%s has %d versions", key, n)
		}
	}
	if len(after) <= len(before) || s.Stats().Objects != uint64(len(after)-len(before)) {
		t.Fatalf("%d objects before, %d after, %d uploaded by the second run", len(before), len(after), s.Stats().Objects)
	}
	sameAsBucket(t, c, node, dir, k)
}
