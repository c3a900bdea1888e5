package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kvhygiene/kvh/forensic"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

// keys makes a key pair named name under a temp dir.
func keys(t *testing.T, name string) (key, pub string) {
	t.Helper()
	root := t.TempDir()
	if code, _, e := runCmd(t, "keygen", "--out", root, "--name", name); code != 0 {
		t.Fatalf("keygen: %s", e)
	}
	return filepath.Join(root, "kvh.key"), filepath.Join(root, "kvh.pub")
}

// writeTrail writes a closed trail of the given bodies, signed with key and
// MACed with mac when it is not nil.
func writeTrail(t *testing.T, key string, mac []byte, bodies ...any) string {
	t.Helper()
	signer, err := forensic.LoadSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "trail")
	l, err := forensic.Open(dir, forensic.Options{Signer: signer, MACKey: mac, MaxSegmentBytes: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bodies {
		if _, err := l.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func counted(n int) []any {
	b := make([]any, n)
	for i := range b {
		b[i] = map[string]int{"i": i}
	}
	return b
}

func macFile(t *testing.T, secret string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hmac")
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// rewriteCheckpoints applies f to each line of the trail's checkpoints.jsonl.
func rewriteCheckpoints(t *testing.T, dir string, f func(i int, size uint64, n string) (string, bool)) {
	t.Helper()
	path := filepath.Join(dir, forensic.CheckpointFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for i, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var cl struct {
			Size uint64 `json:"size"`
			Note string `json:"note"`
		}
		if err := json.Unmarshal(line, &cl); err != nil {
			t.Fatal(err)
		}
		n, keep := f(i, cl.Size, cl.Note)
		if !keep {
			continue
		}
		cl.Note = n
		nb, _ := json.Marshal(cl)
		out.Write(append(nb, '\n'))
	}
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// signAs re-signs a note's text with another key.
func signAs(t *testing.T, n, key string) string {
	t.Helper()
	signer, err := forensic.LoadSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	text := n[:strings.Index(n, "\n\n")+1]
	out, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// forge flips a bit of every signature in a note, keeping the signer's name
// and key hash: a signature that claims to be the key's and is not.
func forge(t *testing.T, n string) string {
	t.Helper()
	i := strings.Index(n, "\n\n")
	var out strings.Builder
	out.WriteString(n[:i+2])
	for _, line := range strings.SplitAfter(n[i+2:], "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			out.WriteString(line)
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(f[2])
		if err != nil {
			t.Fatal(err)
		}
		sig[len(sig)-1] ^= 1
		out.WriteString(f[0] + " " + f[1] + " " + base64.StdEncoding.EncodeToString(sig) + "\n")
	}
	return out.String()
}

// What is not the evidence's fault is exit 1 with a message naming it; what
// the evidence shows is exit 2.
func TestLogExitCodes(t *testing.T) {
	key, pub := keys(t, "kvh-node")
	_, otherPub := keys(t, "kvh-other")
	otherKey, samePub := keys(t, "kvh-node") // the same name, another key
	hmac := macFile(t, "the-node-secret")
	cases := []struct {
		name  string
		setup func(t *testing.T) (dir string, args []string)
		code  int
		want  string // on stderr for exit 1, in the problem for exit 2
	}{
		{"clean", func(t *testing.T) (string, []string) {
			return writeTrail(t, key, nil, counted(50)...), []string{"--pubkey", pub}
		}, 0, ""},
		{"empty directory", func(t *testing.T) (string, []string) {
			return t.TempDir(), []string{"--pubkey", pub}
		}, 1, "no trail in"},
		{"only a LOCK file", func(t *testing.T) (string, []string) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "LOCK"), nil, 0o600)
			return dir, []string{"--pubkey", pub}
		}, 1, "no trail in"},
		{"a file, not a directory", func(t *testing.T) (string, []string) {
			p := filepath.Join(t.TempDir(), "f")
			os.WriteFile(p, []byte("x"), 0o600)
			return p, []string{"--pubkey", pub}
		}, 1, "not a directory"},
		{"segments deleted, checkpoints kept", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, nil, counted(50)...)
			segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.jsonl"))
			for _, s := range segs {
				os.Remove(s)
			}
			return dir, []string{"--pubkey", pub}
		}, 2, "no segments found"},
		{"another node's key", func(t *testing.T) (string, []string) {
			return writeTrail(t, key, nil, counted(50)...), []string{"--pubkey", otherPub}
		}, 1, "not by the given key kvh-other"},
		{"a key with the same name", func(t *testing.T) (string, []string) {
			return writeTrail(t, key, nil, counted(50)...), []string{"--pubkey", samePub}
		}, 1, "not by the given key kvh-node"},
		{"whole trail re-signed by another key", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, nil, counted(50)...)
			rewriteCheckpoints(t, dir, func(_ int, _ uint64, n string) (string, bool) { return signAs(t, n, otherKey), true })
			return dir, []string{"--pubkey", pub}
		}, 1, "treat the trail as tampered"},
		{"forged signature", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, nil, counted(50)...)
			rewriteCheckpoints(t, dir, func(i int, _ uint64, n string) (string, bool) {
				if i == 1 {
					return forge(t, n), true
				}
				return n, true
			})
			return dir, []string{"--pubkey", pub}
		}, 2, "does not verify"},
		{"one checkpoint signed by another key", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, nil, counted(50)...)
			rewriteCheckpoints(t, dir, func(i int, _ uint64, n string) (string, bool) {
				if i == 1 {
					return signAs(t, n, otherKey), true
				}
				return n, true
			})
			return dir, []string{"--pubkey", pub}
		}, 2, "does not verify"},
		{"external checkpoint from another key", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, nil, counted(50)...)
			ck, _ := os.ReadFile(filepath.Join(dir, forensic.CheckpointFile))
			lines := bytes.Split(bytes.TrimSpace(ck), []byte("\n"))
			var cl struct{ Note string }
			json.Unmarshal(lines[len(lines)-1], &cl)
			ext := filepath.Join(t.TempDir(), "offnode.ckpt")
			os.WriteFile(ext, []byte(signAs(t, cl.Note, otherKey)), 0o600)
			return dir, []string{"--pubkey", pub, "--checkpoint", ext}
		}, 1, "not by the given key kvh-node"},
		{"forged external checkpoint", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, nil, counted(50)...)
			ck, _ := os.ReadFile(filepath.Join(dir, forensic.CheckpointFile))
			lines := bytes.Split(bytes.TrimSpace(ck), []byte("\n"))
			var cl struct{ Note string }
			json.Unmarshal(lines[len(lines)-1], &cl)
			ext := filepath.Join(t.TempDir(), "offnode.ckpt")
			os.WriteFile(ext, []byte(forge(t, cl.Note)), 0o600)
			return dir, []string{"--pubkey", pub, "--checkpoint", ext}
		}, 2, "does not verify"},
		{"right HMAC key", func(t *testing.T) (string, []string) {
			return writeTrail(t, key, []byte("the-node-secret"), counted(50)...), []string{"--pubkey", pub, "--hmac-key-file", hmac}
		}, 0, ""},
		{"wrong HMAC key", func(t *testing.T) (string, []string) {
			return writeTrail(t, key, []byte("another-secret"), counted(50)...), []string{"--pubkey", pub, "--hmac-key-file", hmac}
		}, 1, "HMAC key does not match"},
		{"record edited, HMAC key given", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, []byte("the-node-secret"), counted(50)...)
			seg := filepath.Join(dir, "seg-000000.jsonl")
			b, _ := os.ReadFile(seg)
			os.WriteFile(seg, bytes.Replace(b, []byte(`{"i":3}`), []byte(`{"i":4}`), 1), 0o600)
			return dir, []string{"--pubkey", pub, "--hmac-key-file", hmac}
		}, 2, "MAC invalid"},
		{"wrong HMAC key, no signatures to tell", func(t *testing.T) (string, []string) {
			return writeTrail(t, key, []byte("another-secret"), counted(50)...), []string{"--no-signatures", "--hmac-key-file", hmac}
		}, 2, "MAC invalid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, args := tc.setup(t)
			code, out, e := runCmd(t, append([]string{"log", dir, "--json"}, args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, e)
			}
			switch tc.code {
			case exitError:
				if !strings.Contains(e, tc.want) {
					t.Errorf("stderr does not name the problem (%q): %s", tc.want, e)
				}
				if strings.Contains(out, `"ok"`) {
					t.Errorf("a verdict was printed for what is not the evidence's fault: %s", out)
				}
			case exitFail:
				var rep forensic.Report
				if err := json.Unmarshal([]byte(out), &rep); err != nil {
					t.Fatal(err)
				}
				if rep.Problem == nil || !strings.Contains(rep.Problem.Reason, tc.want) {
					t.Errorf("problem %+v, want %q", rep.Problem, tc.want)
				}
			}
		})
	}
}

// A segment or checkpoint file the auditor cannot read is an I/O problem,
// not a missing segment. Root reads everything, so as root the built binary
// runs as nobody.
func TestLogUnreadableIsNotTampered(t *testing.T) {
	key, pub := keys(t, "kvh-node")
	for _, f := range []string{"seg-000001.jsonl", "seg-000000.jsonl", forensic.CheckpointFile} {
		t.Run(f, func(t *testing.T) {
			dir := writeTrail(t, key, nil, counted(200)...)
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
			code, e := runAsAuditor(t, dir, f, "log", dir, "--pubkey", pub)
			if code != exitError || !strings.Contains(e, f) || !strings.Contains(e, "permission denied") {
				t.Errorf("exit %d, want 1 naming %s: %s", code, f, e)
			}
		})
	}
}

// runAsAuditor makes everything under dir readable but the file hidden, and
// runs kvh-verify as a user who is not root.
func runAsAuditor(t *testing.T, dir, hidden string, args ...string) (int, string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			os.Chmod(p, map[bool]os.FileMode{true: 0o755, false: 0o644}[fi.IsDir()])
		}
		return nil
	})
	if err := os.Chmod(filepath.Join(dir, hidden), 0o000); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		code, _, e := runCmd(t, args...)
		return code, e
	}
	verify := binary(t, "kvh-verify")
	// nobody must reach the trail, the key and the binary.
	for _, p := range append([]string{dir, verify}, args...) {
		for d := filepath.Dir(p); strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
	}
	for _, p := range args {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			os.Chmod(p, 0o644)
		}
	}
	cmd := exec.Command(verify, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}

// A failed verdict's summary states only what was established: no "MACs
// verified" under "MAC invalid", no "signatures verified" under a forged
// signature; and --json keeps the counts.
func TestLogSummaryMatchesVerdict(t *testing.T) {
	key, pub := keys(t, "kvh-node")
	hmac := macFile(t, "the-node-secret")
	edit := func(dir, from, to string) {
		segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.jsonl"))
		for _, seg := range segs {
			if b, _ := os.ReadFile(seg); bytes.Contains(b, []byte(from)) {
				os.WriteFile(seg, bytes.Replace(b, []byte(from), []byte(to), 1), 0o600)
				return
			}
		}
		t.Fatalf("%s not in the trail", from)
	}
	cases := []struct {
		name      string
		setup     func(t *testing.T) (string, []string)
		problem   string
		sig, macs string // the summary's lines
	}{
		{"MAC invalid", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, []byte("the-node-secret"), counted(200)...)
			edit(dir, `{"i":60}`, `{"i":61}`)
			return dir, []string{"--hmac-key-file", hmac}
		}, "MAC invalid", "verified", "FAILED"},
		{"record edited, no MACs", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, nil, counted(200)...)
			edit(dir, `{"i":60}`, `{"i":61}`)
			return dir, nil
		}, "", "verified", "none declared"},
		{"record edited, MACs not checked", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, []byte("the-node-secret"), counted(200)...)
			edit(dir, `{"i":60}`, `{"i":61}`)
			return dir, nil
		}, "", "verified", "present on every record, NOT CHECKED"},
		{"record edited, MACs verified before it", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, []byte("the-node-secret"), counted(200)...)
			seg := filepath.Join(dir, "seg-000001.jsonl")
			b, _ := os.ReadFile(seg)
			lines := bytes.SplitAfter(b, []byte("\n"))
			lines[3], lines[4] = lines[4], lines[3] // reordered: seq fails before the MAC is looked at
			os.WriteFile(seg, bytes.Join(lines, nil), 0o600)
			return dir, []string{"--hmac-key-file", hmac}
		}, "expected", "verified", "verified on every record before the problem"},
		{"forged checkpoint", func(t *testing.T) (string, []string) {
			dir := writeTrail(t, key, []byte("the-node-secret"), counted(200)...)
			rewriteCheckpoints(t, dir, func(i int, _ uint64, n string) (string, bool) {
				if i == 0 {
					return forge(t, n), true
				}
				return n, true
			})
			return dir, []string{"--hmac-key-file", hmac}
		}, "does not verify", "FAILED", "not checked"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, args := tc.setup(t)
			args = append([]string{"log", dir, "--pubkey", pub}, args...)
			code, out, e := runCmd(t, args...)
			if code != exitFail {
				t.Fatalf("exit %d: %s %s", code, out, e)
			}
			lines := map[string]string{}
			for _, l := range strings.Split(out, "\n")[1:] {
				if f := strings.Fields(l); len(f) > 1 {
					lines[f[0]] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), f[0]))
				}
			}
			if !strings.Contains(out, "FAILED: ") || !strings.Contains(out, tc.problem) {
				t.Errorf("verdict does not say %q:\n%s", tc.problem, out)
			}
			if s := lines["signatures"]; !strings.HasPrefix(s, tc.sig) {
				t.Errorf("signatures %q, want %q:\n%s", s, tc.sig, out)
			}
			if s := lines["MACs"]; !strings.HasPrefix(s, tc.macs) {
				t.Errorf("MACs %q, want %q:\n%s", s, tc.macs, out)
			}
			if strings.Contains(out, "attests 0 records") {
				t.Errorf("a failed walk claims the latest checkpoint attests 0 records:\n%s", out)
			}
			// The machine verdict says the same and keeps its counts.
			code, js, _ := runCmd(t, append(args, "--json")...)
			var rep forensic.Report
			if err := json.Unmarshal([]byte(js), &rep); err != nil || code != exitFail {
				t.Fatalf("json: %d %v %s", code, err, js)
			}
			if !strings.HasPrefix(rep.Signatures, tc.sig) || !strings.HasPrefix(rep.MAC, tc.macs) {
				t.Errorf("json says signatures %q, mac %q; want %q, %q", rep.Signatures, rep.MAC, tc.sig, tc.macs)
			}
			if tc.sig == "verified" && (rep.Bytes == 0 || rep.Checkpoints == 0 || rep.Origin == "") {
				t.Errorf("json lost the counts of what was checked: %s", js)
			}
		})
	}
}

// openPTY returns a pseudo-terminal's two ends, or skips.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlocking pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("opening pty: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// On a terminal, the progress line of a long verify is gone before the
// report (or an error) is printed, not left for the report to continue.
func TestLogProgressEndsBeforeReport(t *testing.T) {
	key, pub := keys(t, "kvh-node")
	big := make([]any, 40) // over 1 MiB: progress is reported per MiB
	for i := range big {
		big[i] = map[string]string{"pad": strings.Repeat("x", 48<<10)}
	}
	dir := writeTrail(t, key, nil, big...)
	// A truncated copy fails after the whole walk: its verdict follows the
	// progress line too.
	cut := writeTrail(t, key, nil, big...)
	segs, _ := filepath.Glob(filepath.Join(cut, "seg-*.jsonl"))
	os.Remove(segs[len(segs)-1])
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"log", dir, "--pubkey", pub}, exitOK},
		{[]string{"log", dir, "--pubkey", pub, "--json"}, exitOK},
		{[]string{"log", dir, "--no-signatures"}, exitOK},
		{[]string{"log", cut, "--pubkey", pub}, exitFail},
	} {
		t.Run(strings.Join(tc.args[2:], " "), func(t *testing.T) {
			m, tty := openPTY(t)
			got := make(chan []byte)
			go func() {
				b, _ := io.ReadAll(m) // ends with EIO once the tty is closed
				got <- b
			}()
			code := run(tc.args, tty, tty)
			tty.Close()
			out := string(<-got)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %q", code, tc.code, out)
			}
			last := strings.LastIndex(out, "verifying")
			if last < 0 {
				t.Fatalf("no progress shown on a terminal: %q", out)
			}
			rest := out[last:]
			report := strings.IndexAny(rest, "{k") // the JSON or "kvh-verify: trail"
			end := strings.Index(rest, "\r\x1b[K")
			if end < 0 || report < 0 || end > report {
				t.Errorf("the report continues the progress line:\n%q", rest)
			}
		})
	}
}

// The seed format's summary does not say its HMACs verified when they did not.
func TestLogSeedSummaryMatchesVerdict(t *testing.T) {
	src := "../../forensic/testdata/seed/clean"
	dir := t.TempDir()
	ents, _ := filepath.Glob(filepath.Join(src, "*.log"))
	for _, e := range ents {
		b, _ := os.ReadFile(e)
		os.WriteFile(filepath.Join(dir, filepath.Base(e)), b, 0o600)
	}
	log := filepath.Join(dir, "kv_cache.log")
	code, out, _ := runCmd(t, "log", "--format", "seed", log, "--hmac-key-file", macFile(t, "secret"))
	if code != exitOK || !strings.Contains(out, "HMAC                   required on every line and verified") {
		t.Fatalf("clean: %d\n%s", code, out)
	}
	code, out, _ = runCmd(t, "log", "--format", "seed", log, "--hmac-key-file", macFile(t, "wrong"))
	if code != exitFail || strings.Contains(out, "and verified") || !strings.Contains(out, "HMAC                   FAILED") {
		t.Errorf("wrong key: %d\n%s", code, out)
	}
	b, _ := os.ReadFile(log)
	os.WriteFile(log, bytes.Replace(b, []byte(`"`), []byte(`'`), 1), 0o600) // a line that does not parse
	code, out, _ = runCmd(t, "log", "--format", "seed", log, "--hmac-key-file", macFile(t, "secret"))
	if code != exitFail || strings.Contains(out, "and verified") {
		t.Errorf("broken line: %d\n%s", code, out)
	}
}
