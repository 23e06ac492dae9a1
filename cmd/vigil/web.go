package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/prometheus/exporter-toolkit/web"
	"go.yaml.in/yaml/v3"

	"github.com/vigil-sec/vigil/detector"
)

// webConfigTLS is the part of a web configuration file (the Prometheus
// exporter toolkit's format) that vigil checks itself before the toolkit
// reads it: where the server's private key is.
type webConfigTLS struct {
	TLS struct {
		Cert     string `yaml:"cert"`
		CertFile string `yaml:"cert_file"`
		Key      string `yaml:"key"`
		KeyFile  string `yaml:"key_file"`
	} `yaml:"tls_server_config"`
}

// checkWebConfig validates the --web.config.file of `vigil run` (the
// format of the Prometheus exporter toolkit: tls_server_config with
// cert_file, key_file, client_ca_file and client_auth_type;
// basic_auth_users with bcrypt hashes; http_server_config; rate_limit) as
// the toolkit will read it, and refuses a private key that other users may
// read: key_file (relative paths are relative to the file), or the file
// itself when it holds the key inline (key). It returns whether the file
// turns TLS on.
func checkWebConfig(path string) (tlsOn bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("--web.config.file: %w", err)
	}
	var c webConfigTLS
	if err := yaml.Unmarshal(b, &c); err != nil {
		return false, fmt.Errorf("--web.config.file %s: %w", path, err)
	}
	t := c.TLS
	switch {
	case t.KeyFile != "":
		kf := t.KeyFile
		if !filepath.IsAbs(kf) {
			kf = filepath.Join(filepath.Dir(path), kf)
		}
		if err := detector.CheckSecretFile("--web.config.file "+path+": tls_server_config.key_file", kf); err != nil {
			return false, err
		}
	case t.Key != "":
		if err := detector.CheckSecretFile("--web.config.file (it holds tls_server_config.key)", path); err != nil {
			return false, err
		}
	}
	if err := web.Validate(path); err != nil {
		return false, fmt.Errorf("--web.config.file %s: %w", path, err)
	}
	return t.Cert != "" || t.CertFile != "" || t.Key != "" || t.KeyFile != "", nil
}

// serveWeb serves srv on ln: plain HTTP without a web configuration file,
// else as the file says (TLS, client certificates, basic auth), through the
// exporter toolkit, which re-reads the file for every connection and
// request (certificates and users can change without a restart).
func serveWeb(ln net.Listener, srv *http.Server, webConfig string, log *slog.Logger) error {
	if webConfig == "" {
		return srv.Serve(ln)
	}
	no := false
	addrs := []string{ln.Addr().String()}
	return web.Serve(ln, srv, &web.FlagConfig{WebListenAddresses: &addrs, WebSystemdSocket: &no, WebConfigFile: &webConfig}, log.With("component", "web"))
}
