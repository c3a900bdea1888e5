package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/s3test"
	"github.com/kvhygiene/kvh/ship"
	"github.com/minio/minio-go/v7"
)

// The agent ships its trail with --ship-to: through a restart and an
// outage of the store (a shipping_backlog violation, recorded and acted on
// no one), ending with the node's files and the bucket's the same bytes,
// every object written once, the secret nowhere in the log.
func TestAgentShipsItsTrail(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	srv.Env(t)
	a := newAgent(t, "--ship-to", "s3://trails/fleet", "--ship-node", "node-x", "--ship-endpoint", srv.Addr, "--ship-insecure",
		"--ship-region", "us-east-1", "--ship-interval", "100ms", "--ship-max-backlog-age", "500ms", "--on-violation", "kill")
	shipped := func(m string) bool {
		return strings.Contains(m, "\nkvh_ship_backlog_bytes 0\n") && strings.Contains(m, "\nkvh_ship_oldest_unshipped_age_seconds 0\n") &&
			!strings.Contains(m, "\nkvh_ship_last_shipped_seq -1\n") && !strings.Contains(m, "\nkvh_ship_objects_total 0\n")
	}
	if m, ok := waitMetricsFor(a, 60*time.Second, shipped); !ok {
		t.Fatalf("/metrics:\n%s\n%s\nversitygw:\n%s", grepMetrics(m), a.log, srv.Log())
	}
	a.stop()
	a.start() // a restart: the shipper resumes from its state
	srv.Stop()
	a.client("driver") // records to ship while the store is down
	ev, ok := a.waitEvent(20*time.Second, func(e map[string]any) bool { return e["ev"] == "violation" && e["kind"] == "shipping_backlog" })
	if !ok {
		t.Fatalf("no shipping_backlog violation during the outage:\n%s", a.log)
	}
	if ev["action"] != "observe" || ev["pid"] != nil && num(ev["pid"]) != 0 || !strings.Contains(ev["detail"].(string), "s3://trails/fleet/node-x") {
		t.Fatalf("violation %v", ev)
	}
	for _, e := range a.events() {
		if e["ev"] == "action" && e["kind"] == "shipping_backlog" {
			t.Fatalf("acted on a node violation: %v", e)
		}
	}
	srv.Restart()
	if m, ok := waitMetricsFor(a, 60*time.Second, shipped); !ok {
		t.Fatalf("the backlog did not drain:\n%s\n%s", grepMetrics(m), a.log)
	}
	a.stop() // the last round ships the close record
	if strings.Contains(a.log.String(), srv.Secret) {
		t.Fatal("the secret key is in the agent's log")
	}

	c := srv.Client(t)
	got := t.TempDir()
	f, err := ship.Fetch(context.Background(), c, ship.Location{Bucket: "trails", Prefix: "fleet/node-x"}, got)
	if err != nil || len(f.Problems) > 0 {
		t.Fatalf("fetch: %v %q", err, f.Problems)
	}
	trail := filepath.Join(a.dir, "trail")
	ents, _ := os.ReadDir(trail)
	files := 0
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".jsonl") {
			continue
		}
		files++
		want, _ := os.ReadFile(filepath.Join(trail, e.Name()))
		have, _ := os.ReadFile(filepath.Join(got, e.Name()))
		if !bytes.Equal(want, have) {
			t.Errorf("%s: the bucket holds %d bytes, the node %d", e.Name(), len(have), len(want))
		}
	}
	if files < 3 {
		t.Fatalf("%d trail files", files)
	}
	for o := range c.ListObjects(context.Background(), "trails", minio.ListObjectsOptions{Prefix: "fleet/", Recursive: true, WithVersions: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if !o.IsLatest {
			t.Errorf("%s was written more than once", o.Key)
		}
	}
	if st, err := os.Stat(filepath.Join(trail, ship.StateDir, "state.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file %v %v", st, err)
	}
	if rep := a.verify(); !rep.OK {
		t.Fatalf("the node's trail with a ship/ directory in it: %+v", rep.Problem)
	}
}

// waitMetricsFor polls /metrics until ok holds of it.
func waitMetricsFor(a *testAgent, d time.Duration, ok func(string) bool) (string, bool) {
	deadline := time.Now().Add(d)
	for {
		_, m := a.get("/metrics")
		if ok(m) {
			return m, true
		}
		if time.Now().After(deadline) {
			return m, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Shipping without credentials, or with a bad destination, refuses to start
// and says why.
func TestShipConfigIsRefused(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	a := newAgent(t)
	a.stop()
	base := []string{"--socket", filepath.Join(dir, "s"), "--listen", "127.0.0.1:0", "--trail-dir", filepath.Join(a.dir, "trail"),
		"--signing-key", filepath.Join(a.dir, "kvh.key"), "--append-only=false", "--witness", "off"}
	for args, want := range map[string]string{
		"--ship-to s3://trails/fleet":              "no object storage credentials",
		"--ship-to http://trails/fleet":            "is not an s3://bucket/prefix URL",
		"--ship-to s3://trails --ship-node a/b":    "must be one path element",
		"--ship-node a":                            "need --ship-to",
		"--ship-to s3://trails --ship-interval 0s": "--ship-interval must be positive",
	} {
		out, err := exec.Command(agentBin, append(base, strings.Fields(args)...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("%s: %v, want %q in:\n%s", args, err, want, out)
		}
	}
}
