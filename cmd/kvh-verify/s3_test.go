package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/internal/s3test"
	"github.com/kvhygiene/kvh/ship"
)

// shipTrail ships dir to node on srv, one round.
func shipTrail(t *testing.T, srv *s3test.Server, dir string, node ship.Location) {
	t.Helper()
	c, err := ship.Endpoint{Host: srv.Addr, Insecure: true, Region: "us-east-1"}.Client()
	if err != nil {
		t.Fatal(err)
	}
	s, err := ship.New(ship.Config{TrailDir: dir, Node: node, Client: c, Retention: func() time.Duration { return time.Hour }})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func s3Args(srv *s3test.Server, args ...string) []string {
	return append([]string{args[0], "--s3-endpoint", srv.Addr, "--s3-insecure", "--s3-region", "us-east-1"}, args[1:]...)
}

// `log s3://` verifies straight from the bucket with the newest shipped
// checkpoint as the off-node checkpoint: after root truncates the node's
// trail and deletes its checkpoints, the node's trail verifies on its own,
// but not against the bucket's checkpoint, and once the agent ships the
// truncated files, not from the bucket either.
func TestLogFromBucketCatchesTruncation(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	srv.Env(t)
	key, pub := keys(t, "node-a")
	dir := writeTrail(t, key, nil, counted(60)...)
	node := ship.Location{Bucket: "trails", Prefix: "fleet/node-a"}
	shipTrail(t, srv, dir, node)

	code, out, errb := runCmd(t, s3Args(srv, "log", "--pubkey", pub, "s3://trails/fleet/node-a")...)
	if code != exitOK || !strings.Contains(out, "trail s3://trails/fleet/node-a VERIFIED") || !strings.Contains(out, "off-node     1 of 1 external checkpoint(s) matched") {
		t.Fatalf("log s3:// of an intact trail: exit %d\n%s%s", code, out, errb)
	}

	// Root on the node: cut the tail, delete the checkpoints, let the agent
	// reopen (no checkpoint contradicts it) and go on.
	cutTail(t, dir, 5)
	signer, _ := forensic.LoadSigner(key)
	l, err := forensic.Open(dir, forensic.Options{Signer: signer, MaxSegmentBytes: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	l.Append(map[string]int{"after": 1})
	l.Close()
	if code, out, _ := runCmd(t, "log", "--pubkey", pub, dir); code != exitOK {
		t.Fatalf("precondition: the truncated trail alone should verify: %s", out)
	}
	code, out, errb = runCmd(t, s3Args(srv, "log", "--pubkey", pub, "--checkpoint", "s3://trails/fleet/node-a", dir)...)
	if code != exitFail || !strings.Contains(out, "FAILED") {
		t.Fatalf("the node's trail against the shipped checkpoint: exit %d\n%s%s", code, out, errb)
	}
	shipTrail(t, srv, dir, node) // the agent ships the truncated files: a new generation
	code, out, errb = runCmd(t, s3Args(srv, "log", "--pubkey", pub, "s3://trails/fleet/node-a")...)
	if code != exitFail || !strings.Contains(out, "trail s3://trails/fleet/node-a FAILED") || !strings.Contains(out, "store: ") {
		t.Fatalf("log s3:// after truncation: exit %d\n%s%s", code, out, errb)
	}
	t.Logf("%s", out)

	// Credentials come from the environment or a file, and their absence
	// is said plainly.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	code, _, errb = runCmd(t, s3Args(srv, "log", "--pubkey", pub, "s3://trails/fleet/node-a")...)
	if code != exitError || !strings.Contains(errb, "no object storage credentials") {
		t.Fatalf("without credentials: exit %d: %s", code, errb)
	}
	creds := filepath.Join(t.TempDir(), "credentials")
	os.WriteFile(creds, []byte("[default]\naws_access_key_id = "+srv.Access+"\naws_secret_access_key = "+srv.Secret+"\n"), 0o644)
	code, _, errb = runCmd(t, s3Args(srv, "log", "--pubkey", pub, "--s3-credentials-file", creds, "s3://trails/fleet/node-a")...)
	if code != exitError || !strings.Contains(errb, "must be 0600") {
		t.Fatalf("a credentials file others can read: exit %d: %s", code, errb)
	}
	os.Chmod(creds, 0o600)
	code, out, errb = runCmd(t, s3Args(srv, "log", "--pubkey", pub, "--s3-credentials-file", creds, "s3://trails/fleet/node-a")...)
	if code != exitFail || strings.Contains(out+errb, srv.Secret) {
		t.Fatalf("with a credentials file: exit %d\n%s%s", code, out, errb)
	}
}

// cutTail removes the last n lines of the last segment and deletes
// checkpoints.jsonl.
func cutTail(t *testing.T, dir string, n int) {
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
	lines = lines[:len(lines)-1]
	if len(lines) <= n+1 {
		t.Fatalf("%s has %d lines", last, len(lines))
	}
	if err := os.WriteFile(p, bytes.Join(lines[:len(lines)-n], nil), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, forensic.CheckpointFile)); err != nil {
		t.Fatal(err)
	}
}

// `fleet` verifies every node's shipped trail and names the one whose
// records were rewritten on the node after shipping.
func TestFleetNamesTheTamperedNode(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	srv.Env(t)
	keyDir := t.TempDir()
	var dirs []string
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		key, pub := keys(t, n)
		b, _ := os.ReadFile(pub)
		os.WriteFile(filepath.Join(keyDir, n+".pub"), b, 0o644)
		dir := writeTrail(t, key, nil, counted(50)...)
		shipTrail(t, srv, dir, ship.Location{Bucket: "trails", Prefix: "fleet/" + n})
		dirs = append(dirs, dir)
	}
	code, out, errb := runCmd(t, s3Args(srv, "fleet", "--pubkey-dir", keyDir, "s3://trails/fleet")...)
	if code != exitOK || strings.Count(out, "VERIFIED") != 3 || !strings.Contains(out, "3 node(s): 3 verified, 0 FAILED") {
		t.Fatalf("intact fleet: exit %d\n%s%s", code, out, errb)
	}
	// Root on node-b rewrites a record, and the agent ships what it finds.
	seg := filepath.Join(dirs[1], "seg-000000.jsonl")
	b, _ := os.ReadFile(seg)
	forged := bytes.Replace(b, []byte(`{"i":3}`), []byte(`{"i":4}`), 1)
	if bytes.Equal(forged, b) {
		t.Fatal("nothing to forge")
	}
	os.WriteFile(seg, forged, 0o600)
	shipTrail(t, srv, dirs[1], ship.Location{Bucket: "trails", Prefix: "fleet/node-b"})

	code, out, errb = runCmd(t, s3Args(srv, "fleet", "--pubkey-dir", keyDir, "s3://trails/fleet")...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitFail || len(lines) != 4 || !strings.HasPrefix(lines[0], "node-a  VERIFIED") || !strings.HasPrefix(lines[1], "node-b  FAILED") ||
		!strings.HasPrefix(lines[2], "node-c  VERIFIED") || !strings.Contains(lines[3], "3 node(s): 2 verified, 1 FAILED, 0 not verifiable (failed: node-b)") {
		t.Fatalf("fleet with node-b tampered: exit %d\n%s%s", code, out, errb)
	}
	code, out, _ = runCmd(t, s3Args(srv, "fleet", "--pubkey-dir", keyDir, "--json", "s3://trails/fleet")...)
	var fv fleetVerdict
	if err := json.Unmarshal([]byte(out), &fv); err != nil || code != exitFail {
		t.Fatalf("--json: exit %d, %v\n%s", code, err, out)
	}
	if fv.Verified != 2 || fv.Failed != 1 || len(fv.Nodes) != 3 || fv.Nodes[1].Node != "node-b" || fv.Nodes[1].OK || fv.Nodes[1].Report.Problem == nil {
		t.Fatalf("--json verdict %+v", fv)
	}
	// One fleet-wide key that is not the nodes': the intact nodes are not
	// verifiable (exit 1 alone), not tampered; node-b's broken chain fails
	// whatever the key (exit 2 wins).
	_, other := keys(t, "other")
	code, out, _ = runCmd(t, s3Args(srv, "fleet", "--pubkey", other, "s3://trails/fleet")...)
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if code != exitFail || len(lines) != 4 || !strings.HasPrefix(lines[0], "node-a  ERROR     the trail's checkpoints are signed by node-a") ||
		!strings.HasPrefix(lines[2], "node-c  ERROR") || !strings.Contains(lines[3], "2 not verifiable") {
		t.Fatalf("the wrong key: exit %d\n%s", code, out)
	}
}

// A node whose keys rotated verifies in a fleet run from the auditor's
// keyring with every MAC key, each epoch's MACs checked.
func TestFleetRotatedNode(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	srv.Env(t)
	dir, ring, old, next := rotatedTrailCLI(t)
	shipTrail(t, srv, dir, ship.Location{Bucket: "trails", Prefix: "fleet/node-r"})
	code, out, errb := runCmd(t, s3Args(srv, "fleet", "--keyring", ring, "--hmac-key-file", old[1], "--hmac-key-file", next[1], "--json", "s3://trails/fleet")...)
	var fv fleetVerdict
	if err := json.Unmarshal([]byte(out), &fv); err != nil || code != exitOK || fv.Verified != 1 || fv.Nodes[0].Report.MAC != "verified" {
		t.Fatalf("fleet --keyring with both MAC keys: exit %d %v\n%s%s", code, err, out, errb)
	}
	code, out, errb = runCmd(t, s3Args(srv, "fleet", "--pubkey", pubOf(old[0]), "--hmac-key-file", next[1], "s3://trails/fleet")...)
	if code != exitOK || !strings.Contains(out, "node-r  VERIFIED") || !strings.Contains(out, "MACs verified except seq 0..") {
		t.Fatalf("fleet --pubkey with the new MAC key only: exit %d\n%s%s", code, out, errb)
	}
}

// A node's NODE.pub pins the key its trail must be signed by: a fleet
// keyring (every node's keys, kept for rotations) must not let another
// node's trail, shipped over this node's prefix, verify as this node's.
// NODE.pub alone verifies a rotated trail (it follows the sealed rekey
// records), so the keyring is for the nodes without one.
func TestFleetKeyringDoesNotUnpinNodeKey(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	srv.Env(t)
	keyDir := t.TempDir()
	ring := filepath.Join(t.TempDir(), "keyring")
	var ringText []byte
	var dirs []string
	for _, n := range []string{"node-a", "node-b"} {
		key, pub := keys(t, n)
		b, _ := os.ReadFile(pub)
		os.WriteFile(filepath.Join(keyDir, n+".pub"), b, 0o644)
		ringText = append(ringText, b...)
		ringText = append(ringText, '\n')
		dirs = append(dirs, writeTrail(t, key, nil, counted(20)...))
	}
	os.WriteFile(ring, ringText, 0o644)
	shipTrail(t, srv, dirs[1], ship.Location{Bucket: "trails", Prefix: "fleet/node-b"})
	// node-b's trail where node-a's belongs.
	shipTrail(t, srv, dirs[1], ship.Location{Bucket: "trails", Prefix: "fleet/node-a"})
	code, out, errb := runCmd(t, s3Args(srv, "fleet", "--pubkey-dir", keyDir, "s3://trails/fleet")...)
	if code == exitOK || strings.HasPrefix(out, "node-a  VERIFIED") {
		t.Fatalf("--pubkey-dir: node-b's trail verified as node-a's: exit %d\n%s%s", code, out, errb)
	}
	code, out, errb = runCmd(t, s3Args(srv, "fleet", "--pubkey-dir", keyDir, "--keyring", ring, "s3://trails/fleet")...)
	if code == exitOK || strings.HasPrefix(out, "node-a  VERIFIED") {
		t.Fatalf("--pubkey-dir with --keyring: node-b's trail verified as node-a's: exit %d\n%s%s", code, out, errb)
	}
}

// Nodes verified in parallel share one VerifyOptions (the keyring and MAC
// key slices): run under -race, nothing in Verify may write to them.
func TestFleetParallelSharesTrust(t *testing.T) {
	srv := s3test.Start(t)
	srv.Bucket(t, "trails", true)
	srv.Env(t)
	dir, ring, old, next := rotatedTrailCLI(t)
	for _, n := range []string{"node-a", "node-b", "node-c", "node-d"} {
		shipTrail(t, srv, dir, ship.Location{Bucket: "trails", Prefix: "fleet/" + n})
	}
	code, out, errb := runCmd(t, s3Args(srv, "fleet", "--keyring", ring, "--hmac-key-file", old[1], "--hmac-key-file", next[1], "--parallel", "4", "s3://trails/fleet")...)
	if code != exitOK || !strings.Contains(out, "4 node(s): 4 verified") {
		t.Fatalf("fleet: exit %d\n%s%s", code, out, errb)
	}
}
