// Command benchsum writes make bench's summary (build/bench.md) from the
// go test -bench outputs it is given.
//
//	benchsum -o build/bench.md -machine "2-core VM, shared" build/bench-*.txt
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/kvhygiene/kvh/internal/benchsum"
)

func main() {
	out := flag.String("o", "", "write the summary here (default stdout)")
	machine := flag.String("machine", "", "what the machine is, for the header")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "benchsum: name the go test -bench output files")
		os.Exit(2)
	}
	run := &benchsum.Run{}
	for _, name := range flag.Args() {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchsum:", err)
			os.Exit(1)
		}
		err = benchsum.Parse(f, run)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchsum: %s: %v\n", name, err)
			os.Exit(1)
		}
	}
	header := fmt.Sprintf("%s, %d CPUs", time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU())
	if *machine != "" {
		header += ", " + *machine
	}
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		header += ", load average at the end " + strings.Join(strings.Fields(string(la))[:3], " ")
	}
	header += ". From: " + strings.Join(flag.Args(), " ") + "."
	var b bytes.Buffer
	benchsum.Markdown(&b, run, benchsum.Summarize(run, benchsum.Figures), header)
	if *out == "" {
		os.Stdout.Write(b.Bytes())
		return
	}
	if err := os.WriteFile(*out, b.Bytes(), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "benchsum:", err)
		os.Exit(1)
	}
	os.Stdout.Write(b.Bytes())
}
