package realcudatest

import (
	"regexp"
	"strings"
	"testing"
)

// family matches the real driver's exports through which memory is
// allocated, imported, mapped, unmapped, freed, released, trimmed, reset or
// destroyed — deliberately wide (anything with "Mem" in its name, arrays,
// IPC, multicast, external memory, contexts, and every Destroy, Release,
// Free, Unmap, Unregister, Unload, Detach, Trim, Reset). notFamily takes out
// only copies and fills (cuMemcpy*, cuMemset* and their graph nodes), which
// move bytes within memory the caller already owns.
var (
	family = regexp.MustCompile(`Mem|^cu(Array|MipmappedArray|Ipc|Multicast)|^cuDevicePrimaryCtx|^cuCtx(Destroy|Detach)|External|` +
		`Destroy|Release|Free|Unmap|Unregister|Unload|Detach|Trim|Reset`)
	notFamily = regexp.MustCompile(`^cuMem(cpy|set)|^cuGraph(Add|Exec)?Mem(cpy|set)|^cuGraphMem(cpy|set)|^cudbg`)
)

// Every allocation and release-family symbol the real driver exports is in
// the README's table, hooked (and then in hooks.def) or "not hooked: why";
// and the table lists nothing the driver does not export.
func TestEveryMemoryExportIsClassified(t *testing.T) {
	lib := realDriver(t)
	exports, err := exportedSymbols(lib)
	if err != nil {
		t.Fatal(err)
	}
	table := readmeTable(t)
	hooks := hooked(t)
	var missing []string
	inFamily := 0
	for _, s := range sorted(exports) {
		if !family.MatchString(s) || notFamily.MatchString(s) {
			continue
		}
		inFamily++
		r, ok := table[s]
		switch {
		case !ok:
			missing = append(missing, s)
		case r.Hooked && !hooks[s]:
			t.Errorf("README.md:%d: %s is marked hooked, but interpose/hooks.def has no KVH_HOOK(%s, ...)", r.Line, s, s)
		case !r.Hooked && hooks[s]:
			t.Errorf("README.md:%d: %s is marked \"not hooked: %s\", but interpose/hooks.def hooks it: make the row say hooked", r.Line, s, r.Why)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%s exports %d allocation/release-family symbols the README's table does not classify; add a row for each "+
			"(| `name` | alloc, free, import or neither | hooked, or not hooked: why |):\n  %s", lib, len(missing), strings.Join(missing, "\n  "))
	}
	for _, s := range sorted(table) {
		if !exports[s] {
			t.Errorf("README.md:%d: %s is not exported by %s: remove the row", table[s].Line, s, lib)
		}
	}
	// Whatever libkvh hooks that the real driver exports must be in the table.
	for _, s := range sorted(hooks) {
		if _, ok := table[s]; !ok && exports[s] && family.MatchString(s) && !strings.HasPrefix(s, "cuGetProcAddress") {
			t.Errorf("hooks.def hooks %s, which the README's table does not list", s)
		}
	}
	if inFamily < 100 {
		t.Fatalf("only %d family symbols in %s: is this NVIDIA's driver?", inFamily, lib)
	}
	if !t.Failed() {
		t.Logf("%s: %d exports, %d in the allocation/release family, all classified", lib, len(exports), inFamily)
	}
}
