package trailevent

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/violation"
)

var update = flag.Bool("update", false, "rewrite docs/trail-schema.md from the code")

const schemaPath = "../docs/trail-schema.md"

// schema renders docs/trail-schema.md from Kinds and the struct tags.
func schema(t *testing.T) []byte {
	var b bytes.Buffer
	b.WriteString("# The trail's event vocabulary\n\n")
	b.WriteString("<!-- Generated from trailevent/ by `go test ./trailevent/ -update`; TestSchemaDocumented fails when this file and the code differ. -->\n\n")
	fmt.Fprintf(&b, "Schema version **%d** (`trailevent.Version`, written in every `agent_start` record).\n\n", Version)
	b.WriteString("Every trail record (`forensic/`, one JSON line: `v`, `seq`, `ts`, `kind`, `prev`, `body`, `mac`) whose `kind` is `event` carries one of these bodies; the body's `ev` names it. ")
	b.WriteString("Readers ignore fields they do not know and report an unknown `ev` (`trailevent.ErrUnknownEvent`); adding an event or an optional field keeps the version, anything else bumps it. ")
	b.WriteString("Fields marked *omitted when empty* are absent from the JSON when zero.\n\n")
	b.WriteString("## Events\n\n| ev | body | meaning |\n|---|---|---|\n")
	for _, k := range Kinds() {
		if k.Doc == "" {
			t.Errorf("event %s has no description", k.Name)
		}
		fmt.Fprintf(&b, "| `%s` | [%s](#%s) | %s |\n", k.Name, k.Type.Name(), strings.ToLower(k.Type.Name()), k.Doc)
	}
	b.WriteString("\n## Granularity and evidence guarantees\n\n" + Granularity + "\n")
	seen := map[reflect.Type]bool{}
	for _, k := range Kinds() {
		if seen[k.Type] {
			continue
		}
		seen[k.Type] = true
		fmt.Fprintf(&b, "\n## %s\n\n| field | JSON type | meaning |\n|---|---|---|\n", k.Type.Name())
		fields(t, &b, k.Type, "")
	}
	b.WriteString("\n## Record kinds\n\nThe trail's own records (`forensic/`), around the events. Only `rekey` has a body a reader needs; `kvh-verify log` checks all of them.\n\n| kind | body | meaning |\n|---|---|---|\n")
	for _, k := range RecordKinds() {
		if k.Doc == "" {
			t.Errorf("record kind %s has no description", k.Name)
		}
		body := "—"
		if k.Type != nil {
			body = fmt.Sprintf("[%s](#%s)", k.Type.Name(), strings.ToLower(k.Type.Name()))
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", k.Name, body, k.Doc)
	}
	for _, k := range RecordKinds() {
		if k.Type != nil {
			fmt.Fprintf(&b, "\n## %s\n\n| field | JSON type | meaning |\n|---|---|---|\n", k.Type.Name())
			fields(t, &b, k.Type, "")
		}
	}
	b.WriteString("\n## Violation kinds\n\nThe `kind` of a `violation`, `violations_overflow` or `action` record, and the `kind` label of `kvh_violations_total`.\n\n| kind | meaning |\n|---|---|\n")
	for _, k := range violation.Kinds() {
		if k.Doc() == "" {
			t.Errorf("violation kind %s has no description", k)
		}
		fmt.Fprintf(&b, "| `%s` | %s |\n", k, k.Doc())
	}
	return b.Bytes()
}

func fields(t *testing.T, b *bytes.Buffer, typ reflect.Type, prefix string) {
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		doc := f.Tag.Get("doc")
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if doc == "" && prefix == "" {
			t.Errorf("%s.%s has no doc tag", typ.Name(), f.Name)
		}
		if strings.Contains(opts, "omitempty") {
			doc += " *(omitted when empty)*"
		}
		fmt.Fprintf(b, "| `%s%s` | %s | %s |\n", prefix, name, jsonType(ft), strings.TrimSpace(doc))
		switch {
		case ft.Kind() == reflect.Struct:
			fields(t, b, ft, prefix+name+".")
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			fields(t, b, ft.Elem(), prefix+name+"[].")
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			fields(t, b, ft.Elem(), prefix+name+".<key>.")
		}
	}
}

func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "unsigned integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice:
		return "array of " + jsonType(t.Elem())
	case reflect.Map:
		return "object of " + jsonType(t.Elem())
	case reflect.Pointer:
		return jsonType(t.Elem()) + " (optional)"
	case reflect.Struct:
		return "object"
	}
	return t.Kind().String()
}

// TestSchemaDocumented fails when an event kind, a field or a violation kind
// is added without being documented in docs/trail-schema.md.
func TestSchemaDocumented(t *testing.T) {
	want := schema(t)
	if *update {
		if err := os.MkdirAll(filepath.Dir(schemaPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(schemaPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatalf("%v (generate it: go test ./trailevent/ -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the code: run go test ./trailevent/ -update and review the diff", schemaPath)
	}
}
