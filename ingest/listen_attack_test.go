package ingest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kvhygiene/kvh/ingest"
)

// --socket-mode 0666 is documented as the way to let any local serving
// process in, but Listen made the socket's directory 0750 root:root, so a
// process of another uid (not in the group) could not reach the socket at
// all and ran uncovered.
func TestAttackSocketMode0666Reachable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("connecting as another uid needs root: skipped")
	}
	base, err := os.MkdirTemp("", "kvh-listen")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	os.Chmod(base, 0o755)
	sock := filepath.Join(base, "run", "kvh.sock")
	ln, err := ingest.Listen(sock, 0o666, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out, err := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "test", "-w", sock).CombinedOutput()
	if err != nil {
		t.Fatalf("uid 65534 cannot reach a socket of mode 0666: %v %s", err, out)
	}
}
