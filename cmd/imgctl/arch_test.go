package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection enforces the package map of DESIGN.md §2: imports
// flow one way, from cmd/imgctl down to chunkstore.
func TestImportDirection(t *testing.T) {
	const mod = "github.com/imgctl/imgctl/"
	// allowed[p] lists the imgctl packages p may import (directly or not).
	allowed := map[string][]string{
		"chunkstore":           {},
		"chunkstore/storetest": {"chunkstore"},
		"manifest":             {"chunkstore"},
		"delta":                {"manifest", "chunkstore", "internal/zdeflate"},
		"transport":            {"manifest", "chunkstore", "internal/pace"},
		"transport/swarm":      {"manifest", "chunkstore", "internal/pace"},
		"internal/pace":        {},
		"internal/zdeflate":    {},
		"partition":            {"delta", "manifest", "chunkstore"},
	}
	out, err := exec.Command("go", "list", "-deps", "-json", "../../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		name, ok := strings.CutPrefix(p.ImportPath, mod)
		if !ok || strings.HasPrefix(name, "cmd/") {
			continue
		}
		rules, known := allowed[name]
		if !known {
			t.Errorf("package %s is not in the package map (DESIGN.md §2): add it there and here", name)
			continue
		}
		seen++
		ok2 := map[string]bool{}
		for _, r := range rules {
			ok2[r] = true
		}
		for _, d := range p.Deps {
			dn, own := strings.CutPrefix(d, mod)
			if own && !ok2[dn] {
				t.Errorf("%s imports %s: not allowed by the package map", name, dn)
			}
		}
	}
	if seen < 4 {
		t.Fatalf("checked only %d packages", seen)
	}
}
