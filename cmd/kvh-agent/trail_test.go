package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
)

// The agent refuses to start on a tampered trail, naming the file, line
// and seq, and exits non-zero; --accept-tampered-trail keeps the evidence
// and starts a new log that records what was found.
func TestAgentRefusesTamperedTrail(t *testing.T) {
	a := newAgent(t)
	a.stop()
	trail := filepath.Join(a.dir, "trail")
	seg := filepath.Join(trail, "seg-000000.jsonl")
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	// Garble line 2 (seq 1, agent_start) and drop the checkpoints that
	// cover it: complete, chained records follow it, so this is no torn
	// write, whatever the checkpoints say.
	lines := bytes.SplitAfter(data, []byte("\n"))
	lines[1] = bytes.Replace(lines[1], []byte(`"kind":"event"`), []byte(`"kind":"ev#nt"`), 1)
	if err := os.WriteFile(seg, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	ckpts := filepath.Join(trail, forensic.CheckpointFile)
	cdata, err := os.ReadFile(ckpts)
	if err != nil {
		t.Fatal(err)
	}
	var keep []byte
	for _, l := range bytes.SplitAfter(cdata, []byte("\n")) {
		if bytes.HasPrefix(l, []byte(`{"size":1,`)) {
			keep = append(keep, l...)
		}
	}
	if err := os.WriteFile(ckpts, keep, 0o600); err != nil {
		t.Fatal(err)
	}
	before := trailFiles(t, trail)

	code, out := a.runToExit()
	if code == 0 {
		t.Fatalf("the agent started on a tampered trail:\n%s", out)
	}
	t.Logf("exit %d:\n%s", code, out)
	for _, want := range []string{"tampered", "file=seg-000000.jsonl", "line=2", "seq=1", "--accept-tampered-trail"} {
		if !strings.Contains(out, want) {
			t.Errorf("the agent's log does not say %q:\n%s", want, out)
		}
	}
	if after := trailFiles(t, trail); after != before {
		t.Fatalf("a refused start changed the trail:\nbefore %s\nafter  %s", before, after)
	}

	a.extra = []string{"--accept-tampered-trail"}
	a.start()
	if !strings.Contains(a.log.String(), "evidence=") {
		t.Errorf("no warning naming the evidence:\n%s", a.log)
	}
	if m, ok := a.waitMetrics("kvh_trail_tamper_detected 1"); !ok {
		t.Errorf("tampering not visible in the metrics:\n%s", grepMetrics(m))
	}
	a.stop()
	rep := a.verify()
	if !rep.OK || len(rep.Tamper) != 1 {
		t.Fatalf("new log: ok=%v %v tamper=%+v", rep.OK, rep.Problem, rep.Tamper)
	}
	tb := rep.Tamper[0]
	if tb.File != "seg-000000.jsonl" || tb.Line != 2 || tb.Seq != 1 {
		t.Fatalf("tamper_detected names %s line %d seq %d", tb.File, tb.Line, tb.Seq)
	}
	if got := trailFiles(t, filepath.Join(trail, tb.Evidence)); got != before {
		t.Fatalf("evidence is not the trail as found:\nfound    %s\nevidence %s", before, got)
	}
	if len(a.events()) == 0 {
		t.Error("the new log holds no events")
	}
}

// runToExit runs the agent with start's flags and waits for it to exit.
func (a *testAgent) runToExit() (int, string) {
	a.t.Helper()
	args := append([]string{"--socket", a.sock, "--listen", "127.0.0.1:0", "--trail-dir", filepath.Join(a.dir, "trail"),
		"--signing-key", filepath.Join(a.dir, forensic.SigningKeyFile), "--append-only=false"}, a.extra...)
	cmd := exec.Command(agentBin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		a.t.Fatalf("the agent did not exit:\n%s", out.String())
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// trailFiles summarises the trail's files but LOCK: name, size, SHA-256.
func trailFiles(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir && d.IsDir() {
			return fs.SkipDir
		}
		if d.IsDir() || d.Name() == forensic.LockFile {
			return nil
		}
		data, err := os.ReadFile(p)
		fmt.Fprintf(&b, "%s %d %x; ", d.Name(), len(data), sha256.Sum256(data))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Key rotation: the agent, given a new signing key and HMAC key with the
// trail's current ones as --previous-*, writes a rekey record that the old
// key seals and continues with the new keys; restarted with the same flags
// it does not rotate again; and the auditor's old public key still
// verifies the whole trail, following the chain.
func TestAgentRotatesKeys(t *testing.T) {
	keys := t.TempDir()
	mac0, mac1 := filepath.Join(keys, "mac0"), filepath.Join(keys, "mac1")
	for p, k := range map[string]string{mac0: "old-mac-key", mac1: "new-mac-key"} {
		if err := os.WriteFile(p, []byte(k), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a := newAgent(t, "--hmac-key-file", mac0)
	a.stop()
	next := filepath.Join(keys, "next")
	if _, _, err := forensic.GenerateKeys(next, "kvh-test-next"); err != nil {
		t.Fatal(err)
	}
	a.extra = []string{"--signing-key", filepath.Join(next, forensic.SigningKeyFile), "--hmac-key-file", mac1,
		"--previous-signing-key", filepath.Join(a.dir, forensic.SigningKeyFile), "--previous-hmac-key-file", mac0, "--rekey-reason", "test rotation"}
	for run := 0; run < 2; run++ {
		a.start()
		rotated := strings.Contains(a.log.String(), "keys rotated")
		if rotated != (run == 0) {
			t.Fatalf("run %d: rotated=%v:\n%s", run, rotated, a.log)
		}
		a.stop()
	}
	old, err := forensic.LoadVerifier(a.pub)
	if err != nil {
		t.Fatal(err)
	}
	k0, _ := forensic.LoadMACKey(mac0)
	k1, _ := forensic.LoadMACKey(mac1)
	rep, err := forensic.Verify(filepath.Join(a.dir, "trail"), forensic.VerifyOptions{Verifier: old, MACKeys: [][]byte{k0, k1}})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK || rep.MAC != "verified" || len(rep.Keys) != 2 || !strings.HasPrefix(rep.Keys[1].Key, "kvh-test-next+") || rep.Keys[1].MACKeyID != forensic.KeyID(k1) {
		t.Fatalf("ok=%v %v mac=%s keys=%+v", rep.OK, rep.Problem, rep.MAC, rep.Keys)
	}
	// The old key alone can no longer start the agent on this trail.
	a.extra = []string{"--hmac-key-file", mac0}
	if code, out := a.runToExit(); code == 0 || !strings.Contains(out, "kvh-test-next+") {
		t.Fatalf("the retired key reopened the trail (exit %d):\n%s", code, out)
	}
}
