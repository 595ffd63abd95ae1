package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/transport"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type serveOptions struct {
	store, listen, addrFile, uploadLimit string
}

func (o *serveOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&o.store, "store", "", "chunk store directory to serve")
	f.StringVar(&o.listen, "listen", "127.0.0.1:8420", "address to listen on (port 0 picks a free port)")
	f.StringVar(&o.addrFile, "addr-file", "", "write the listening address (host:port) to this file once ready")
	f.StringVar(&o.uploadLimit, "upload-limit", "0", "cap on response bytes per second, e.g. 10MB/s (0: none)")
}

func newServeCommand(g *globalOptions) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve --store S --listen ADDR",
		Short: "Serve a store's releases and chunks over HTTP (origin or branch cache)",
		Long: `serve answers GET /v1/manifests/{name}/{channel}/{latest|rev}, GET /v1/chunks/{id},
POST /v1/chunks/batch, GET /metrics (Prometheus; imgctl_served_bytes_total counts
response body bytes) and GET /healthz. It reads the store without locking it:
releases published while it runs are served at once. Stops on SIGINT/SIGTERM.`,
		Example: `  imgctl serve --store /srv/imgctl --listen 0.0.0.0:8420 --upload-limit 50MB/s`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), g, o)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

func runServe(ctx context.Context, g *globalOptions, o *serveOptions) error {
	if o.store == "" {
		return usagef("serve: --store is required")
	}
	if _, err := os.Stat(o.store); err != nil {
		return err
	}
	limit, err := transport.ParseRate(o.uploadLimit)
	if err != nil {
		return usageError{err}
	}
	srv, err := transport.NewServer(o.store, transport.ServerOptions{UploadLimit: limit, Logger: g.log})
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	if o.addrFile != "" {
		if err := chunkstore.WriteFileAtomic(o.addrFile, []byte(addr+"\n"), 0o644); err != nil {
			ln.Close()
			return err
		}
	}
	g.logf("serving %s on http://%s", o.store, addr)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: nil}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	g.logf("stopped")
	return nil
}
