package ship

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseLocation(t *testing.T) {
	for in, want := range map[string]Location{
		"s3://b":            {Bucket: "b"},
		"s3://b/":           {Bucket: "b"},
		"s3://b/p/q/":       {Bucket: "b", Prefix: "p/q"},
		"s3://trails/fleet": {Bucket: "trails", Prefix: "fleet"},
	} {
		got, err := ParseLocation(in)
		if err != nil || got != want {
			t.Errorf("%s: %+v %v, want %+v", in, got, err, want)
		}
		if j := got.Join("n"); j.Prefix != strings.TrimPrefix(want.Prefix+"/n", "/") {
			t.Errorf("%s: Join = %+v", in, j)
		}
	}
	for _, bad := range []string{"", "b/p", "http://b/p", "s3://", "s3:///p", "s3://b/p//q", "s3://b/../x", "s3://b/./x"} {
		if _, err := ParseLocation(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestChunkKeys(t *testing.T) {
	node := Location{Bucket: "b", Prefix: "fleet/n1"}
	k := chunkKey(node, "seg-000003.jsonl", 2, 4096)
	if k != "fleet/n1/seg-000003.jsonl/g2/00000000000000004096" {
		t.Fatalf("key %s", k)
	}
	ref, err := parseChunkKey(strings.TrimPrefix(k, node.Prefix+"/"))
	if err != nil || ref != (chunkRef{file: "seg-000003.jsonl", gen: 2, off: 4096}) {
		t.Fatalf("%+v %v", ref, err)
	}
	for _, bad := range []string{"LOCK/g1/00000000000000000000", "seg-000001.jsonl/g0/00000000000000000000", "seg-000001.jsonl/1/00000000000000000000",
		"seg-000001.jsonl/g1/12", "seg-000001.jsonl/g1/0000000000000000000x", "checkpoints.jsonl/g1", "x/seg-000001.jsonl/g1/00000000000000000000"} {
		if _, err := parseChunkKey(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestLineSeqAndCuts(t *testing.T) {
	if s, ok := lineSeq([]byte(`{"v":1,"seq":1234,"ts":"x"}`)); !ok || s != 1234 {
		t.Fatalf("%d %v", s, ok)
	}
	if _, ok := lineSeq([]byte(`garbage`)); ok {
		t.Fatal("garbage has a seq")
	}
	b := []byte("aaaa\nbbbb\ncccc\n")
	if n := cutLines(b, 11); n != 10 {
		t.Fatalf("cutLines %d", n)
	}
	if n := cutLines(b, 2); n != 5 {
		t.Fatalf("a line longer than the limit: %d", n)
	}
}

// The state file is private and survives a round trip; a state for another
// destination starts over.
func TestStateFile(t *testing.T) {
	dir := t.TempDir()
	st, moved, err := loadState(dir, "s3://b/n")
	if err != nil || moved || len(st.Files) != 0 {
		t.Fatal(st, moved, err)
	}
	st.Files["seg-000000.jsonl"] = &fileState{Gen: 1, Off: 10}
	if err := st.save(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, StateDir, stateFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%v %v", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Join(dir, StateDir)); di.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", di.Mode())
	}
	back, _, err := loadState(dir, "s3://b/n")
	if err != nil || back.Files["seg-000000.jsonl"].Off != 10 {
		t.Fatal(back, err)
	}
	other, moved, err := loadState(dir, "s3://b/other")
	if err != nil || !moved || len(other.Files) != 0 {
		t.Fatal(other, moved, err)
	}
	os.WriteFile(filepath.Join(dir, StateDir, stateFile), []byte("{"), 0o600)
	if _, _, err := loadState(dir, "s3://b/n"); err == nil || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("a corrupt state: %v", err)
	}
}

// Credentials come from the environment or a private file, never a flag's
// value; missing ones are an error that says where they are looked for.
func TestCredentials(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	t.Setenv("AWS_PROFILE", "")
	if _, err := (Endpoint{Host: "127.0.0.1:1"}).Client(); err != ErrNoCredentials {
		t.Fatalf("no credentials: %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "id")
	if _, err := (Endpoint{Host: "127.0.0.1:1"}).Client(); err == nil || !strings.Contains(err.Error(), "both") {
		t.Fatalf("half the credentials: %v", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	if _, err := (Endpoint{Host: "127.0.0.1:1"}).Client(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	f := filepath.Join(t.TempDir(), "credentials")
	os.WriteFile(f, []byte("[default]\naws_access_key_id = id\naws_secret_access_key = s3cr3t\n"), 0o640)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", f)
	if _, err := (Endpoint{Host: "127.0.0.1:1"}).Client(); err == nil || !strings.Contains(err.Error(), "must be 0600") || strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("a readable credentials file: %v", err)
	}
	os.Chmod(f, 0o600)
	if _, err := (Endpoint{Host: "127.0.0.1:1"}).Client(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_PROFILE", "other")
	if _, err := (Endpoint{Host: "127.0.0.1:1", CredentialsFile: f}).Client(); err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("a profile the file lacks: %v", err)
	}
}
