package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/imgctl/imgctl/manifest"
)

// loadRelease resolves a release argument: a manifest file, or
// NAME[/CHANNEL]@REV (REV a number or "latest") in the store.
func loadRelease(store, channel, arg string) ([]byte, *manifest.Manifest, error) {
	if st, err := os.Stat(arg); err == nil && st.Mode().IsRegular() {
		b, err := os.ReadFile(arg)
		if err != nil {
			return nil, nil, err
		}
		m, err := manifest.Open(b)
		return b, m, err
	}
	name, revs, ok := strings.Cut(arg, "@")
	if !ok {
		return nil, nil, usagef("%q is neither a manifest file nor NAME[/CHANNEL]@REV", arg)
	}
	if n, c, ok := strings.Cut(name, "/"); ok {
		name, channel = n, c
	}
	var rev uint64
	if revs != "latest" {
		v, err := strconv.ParseUint(revs, 10, 64)
		if err != nil || v == 0 {
			return nil, nil, usagef("%q: revision must be a positive number or latest", arg)
		}
		rev = v
	}
	if store == "" {
		return nil, nil, usagef("%s: --store is needed to look up NAME@REV", arg)
	}
	env, _, err := manifest.OpenReleases(store).Read(name, channel, rev)
	if err != nil {
		return nil, nil, err
	}
	m, err := manifest.Open(env)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", arg, err)
	}
	return env, m, nil
}
