package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// dockerfile is Dockerfile.cuda as BuildKit's own parser reads it.
type dockerfile struct {
	stages      []instructions.Stage
	metaArgs    map[string]string // ARG before the first FROM -> default
	makeTargets []string          // what the builder's RUN steps make
	copied      []string          // files the final stage copies from the builder, as builder paths
	finalFiles  []string          // where the final stage puts them
	workdir     string            // the builder's WORKDIR
	user        string
	entrypoint  []string
	warnings    []string
}

var makeTarget = regexp.MustCompile(`^[a-zA-Z0-9_./=-]+$`)

func parseDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile.cuda"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile.cuda: %v", err)
	}
	df := &dockerfile{metaArgs: map[string]string{}}
	for _, w := range res.Warnings {
		df.warnings = append(df.warnings, w.Short)
	}
	// BuildKit's build checks (docker build --check), as warnings.
	lint := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, loc []parser.Range) {
		df.warnings = append(df.warnings, fmt.Sprintf("%s: %s", rule, msg))
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("Dockerfile.cuda: %v", err)
	}
	df.stages = stages
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			v := ""
			if kv.Value != nil {
				v = *kv.Value
			}
			df.metaArgs[kv.Key] = v
		}
	}
	if len(stages) != 2 {
		t.Fatalf("Dockerfile.cuda has %d stages, want 2 (builder, runtime)", len(stages))
	}
	for _, cmd := range stages[0].Commands {
		switch c := cmd.(type) {
		case *instructions.WorkdirCommand:
			df.workdir = c.Path
		case *instructions.RunCommand:
			words := strings.Fields(strings.Join(c.CmdLine, " "))
			if len(words) < 2 || words[0] != "make" {
				t.Errorf("builder step RUN %s is not make <targets>: the image must be built by the Makefile targets CI runs", strings.Join(c.CmdLine, " "))
				continue
			}
			for _, w := range words[1:] {
				if !makeTarget.MatchString(w) {
					t.Errorf("builder step RUN %s: %q is not a make target: the step must be make <targets> and nothing else", strings.Join(c.CmdLine, " "), w)
					continue
				}
				if strings.HasPrefix(w, "-") || strings.Contains(w, "=") {
					t.Errorf("builder step RUN %s: %q changes how make builds; CI runs the targets plainly", strings.Join(c.CmdLine, " "), w)
					continue
				}
				df.makeTargets = append(df.makeTargets, w)
			}
		}
	}
	for _, cmd := range stages[1].Commands {
		switch c := cmd.(type) {
		case *instructions.CopyCommand:
			if c.From != stages[0].Name {
				t.Errorf("runtime stage COPY %v: copies from %q, not the builder: the image holds only what make built", c.SourcePaths, c.From)
				continue
			}
			for _, src := range c.SourcePaths {
				df.copied = append(df.copied, src)
				dst := c.DestPath
				if strings.HasSuffix(dst, "/") {
					dst = path.Join(dst, path.Base(src))
				}
				df.finalFiles = append(df.finalFiles, dst)
			}
		case *instructions.UserCommand:
			df.user = c.User
		case *instructions.EntrypointCommand:
			df.entrypoint = c.CmdLine
		case *instructions.RunCommand:
			t.Errorf("runtime stage RUN %s: the runtime stage only copies what the builder made", strings.Join(c.CmdLine, " "))
		}
	}
	return df
}

// ciMakeTargets is every make target CI runs: those .ci/run names, and
// those a Go test runs through exec.Command("make", ...) (make test runs
// every test, this module's included).
func ciMakeTargets(t *testing.T) map[string]bool {
	t.Helper()
	targets := map[string]bool{}
	ci, err := os.ReadFile(filepath.Join(repoRoot, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^make ([a-z][a-z0-9-]*)`).FindAllStringSubmatch(string(ci), -1) {
		targets[m[1]] = true
	}
	call := regexp.MustCompile(`exec\.Command\("make"((?:,\s*"[^"]*")+)\)`)
	lit := regexp.MustCompile(`"([^"]*)"`)
	err = filepath.WalkDir(repoRoot, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "build" || d.Name() == "var") {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(p, "_test.go") && !strings.HasSuffix(p, ".go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range call.FindAllStringSubmatch(string(b), -1) {
			for _, a := range lit.FindAllStringSubmatch(m[1], -1) {
				if !strings.HasPrefix(a[1], "-") {
					targets[a[1]] = true
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return targets
}

func TestDockerfileBuildsWithCITargets(t *testing.T) {
	df := parseDockerfile(t)
	if len(df.warnings) > 0 {
		t.Errorf("Dockerfile.cuda: BuildKit warns: %q", df.warnings)
	}
	if len(df.makeTargets) == 0 {
		t.Fatal("the builder stage makes nothing")
	}
	ci := ciMakeTargets(t)
	for _, target := range df.makeTargets {
		if !ci[target] {
			t.Errorf("the builder runs make %s, which CI does not run (CI runs %v)", target, sortedKeys(ci))
		}
		// make -n: the target exists and its prerequisites resolve.
		cmd := exec.Command("make", "-n", target)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("make -n %s: %v\n%s", target, err, out)
		}
	}
	if !slices.Equal(df.makeTargets, []string{"build", "interpose"}) {
		t.Errorf("the builder makes %v; makeBuild in this test runs build interpose: keep them the same", df.makeTargets)
	}
	// What the image copies is what those targets made here.
	makeBuild(t)
	if df.workdir == "" {
		t.Fatal("the builder sets no WORKDIR: copied paths cannot be placed")
	}
	want := map[string]bool{"kvh-agent": false, "kvh-verify": false, "libkvh.so": false}
	for _, src := range df.copied {
		rel, err := filepath.Rel(df.workdir, src)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Errorf("COPY --from=builder %s is outside the builder's WORKDIR %s", src, df.workdir)
			continue
		}
		if _, err := os.Stat(filepath.Join(repoRoot, rel)); err != nil {
			t.Errorf("COPY --from=builder %s: make %s does not make it here: %v", src, strings.Join(df.makeTargets, " "), err)
		}
		if _, ok := want[path.Base(src)]; ok {
			want[path.Base(src)] = true
		}
	}
	for f, ok := range want {
		if !ok {
			t.Errorf("the image does not hold %s", f)
		}
	}
	if !slices.Equal(df.entrypoint, []string{"/usr/bin/kvh-agent"}) || !slices.Contains(df.finalFiles, "/usr/bin/kvh-agent") {
		t.Errorf("entrypoint %q: want /usr/bin/kvh-agent, which the image holds (%v)", df.entrypoint, df.finalFiles)
	}
	if u, _, _ := strings.Cut(df.user, ":"); u == "" || u == "0" || u == "root" {
		t.Errorf("USER %q: the image runs non-root by default; the DaemonSet says uid 0 for the agent", df.user)
	}
}

func TestDockerfileBaseImages(t *testing.T) {
	df := parseDockerfile(t)
	builder, runtime := df.stages[0], df.stages[1]
	if builder.Name != "builder" {
		t.Errorf("first stage %q, want builder", builder.Name)
	}
	if runtime.BaseName != "${CUDA_BASE}" {
		t.Errorf("the runtime stage is FROM %s, want the build argument ${CUDA_BASE}", runtime.BaseName)
	}
	if v := df.metaArgs["CUDA_BASE"]; !strings.HasPrefix(v, "nvidia/cuda:") || !strings.Contains(v, "-base-") {
		t.Errorf("CUDA_BASE defaults to %q, want an nvidia/cuda base image", v)
	}
	goImage := df.metaArgs["GO_IMAGE"]
	if builder.BaseName != "${GO_IMAGE}" || !strings.HasPrefix(goImage, "golang:") {
		t.Errorf("the builder is FROM %s (GO_IMAGE %q), want the golang image by build argument", builder.BaseName, goImage)
	}
	// The builder's Go is the one go.mod asks for.
	mod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)`).FindSubmatch(mod)
	if m == nil || !strings.HasPrefix(goImage, "golang:"+string(m[1])+"-") {
		t.Errorf("GO_IMAGE %q does not match go.mod's go %s", goImage, m[1])
	}
	// The digest pin: how, in the comment beside the argument.
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile.cuda"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "@sha256:<digest>") || !strings.Contains(string(b), "imagetools inspect") {
		t.Error("Dockerfile.cuda does not say how to pin CUDA_BASE by digest")
	}
}

// TestDockerignoreKeepsTheSource: the build context holds everything make
// build interpose reads, and nothing built or run here.
func TestDockerignoreKeepsTheSource(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var ignored []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			ignored = append(ignored, strings.TrimSuffix(l, "/"))
		}
	}
	for _, must := range []string{"build", ".git", "var"} {
		if !slices.Contains(ignored, must) {
			t.Errorf(".dockerignore does not leave out %s", must)
		}
	}
	for _, keep := range []string{"Makefile", "go.mod", "go.sum", "interpose", "cmd", "bpf"} {
		if slices.Contains(ignored, keep) {
			t.Errorf(".dockerignore leaves out %s, which make build interpose needs", keep)
		}
	}
}
