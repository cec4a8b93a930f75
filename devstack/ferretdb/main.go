// Command ferretdb is the devstack's FerretDB server: a thin wrapper around the
// embeddable github.com/FerretDB/FerretDB/ferretdb package. Building the upstream
// cmd/ferretdb from the module zip panics at start (build/version/version.txt is not
// in the module), the embeddable package does not need that file.
//
// Usage:
//
//	ferretdb --listen-addr=127.0.0.1:27017 --handler=postgresql --postgresql-url=postgres://...
//	ferretdb --listen-addr= --listen-tls=127.0.0.1:27018 --listen-tls-cert-file=... --listen-tls-key-file=... ...
//	ferretdb --ping=mongodb://127.0.0.1:27017/   # health probe: one MongoDB `ping`, exit 0/1
//	ferretdb --ping=mongodb://127.0.0.1:27018/ --ping-ca-file=ca.crt   # the same over TLS
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.mongodb.org/mongo-driver/bson"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listenAddr := flag.String("listen-addr", "127.0.0.1:27017", "listen TCP address")
	handler := flag.String("handler", "postgresql", "backend handler: postgresql or sqlite")
	pgURL := flag.String("postgresql-url", "postgres://127.0.0.1:5432/ferretdb", "PostgreSQL URL for the postgresql handler")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite URI (directory) for the sqlite handler")
	telemetry := flag.String("telemetry", "disable", "accepted for CLI compatibility; the embedded package never reports telemetry")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	tlsAddr := flag.String("listen-tls", "", "listen TLS address (empty: no TLS listener)")
	tlsCert := flag.String("listen-tls-cert-file", "", "TLS certificate file (PEM)")
	tlsKey := flag.String("listen-tls-key-file", "", "TLS private key file (PEM)")
	ping := flag.String("ping", "", "do not serve: send one `ping` command to this MongoDB URI and exit 0 on success, 1 on failure")
	pingCA := flag.String("ping-ca-file", "", "with --ping: connect over TLS, trusting this CA file (PEM)")
	timeout := flag.Duration("timeout", 2*time.Second, "timeout for --ping")
	flag.Parse()
	_ = telemetry

	if *ping != "" {
		os.Exit(doPing(*ping, *pingCA, *timeout))
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "invalid --log-level:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	f, err := ferretdb.New(&ferretdb.Config{
		// No TLS CA file: it would make FerretDB require client certificates.
		Listener: ferretdb.ListenerConfig{
			TCP:         *listenAddr,
			TLS:         *tlsAddr,
			TLSCertFile: *tlsCert,
			TLSKeyFile:  *tlsKey,
		},
		Logger:        logger,
		Handler:       *handler,
		PostgreSQLURL: *pgURL,
		SQLiteURL:     *sqliteURL,
	})
	if err != nil {
		logger.Error("start failed", "error", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.Run(ctx); err != nil {
			logger.Error("run failed", "error", err)
		}
	}()

	logger.Info("FerretDB listening", "uri", f.MongoDBURI(), "handler", *handler)
	<-done
	logger.Info("FerretDB stopped")
}

// doPing sends one OP_MSG `{ping: 1, $db: "admin"}` over a plain TCP connection and checks the
// reply's `ok`. No driver: a driver would also send session commands FerretDB logs as errors.
// FerretDB answers `ping` after querying its backend's status, so this checks PostgreSQL too.
func doPing(uri, caFile string, timeout time.Duration) int {
	if err := ping(uri, caFile, timeout); err != nil {
		fmt.Fprintln(os.Stderr, "ping:", err)
		return 1
	}
	fmt.Println("ok")
	return 0
}

func ping(uri, caFile string, timeout time.Duration) error {
	u, err := url.Parse(uri)
	if err != nil {
		return err
	}

	conn, err := dial(u.Host, caFile, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()

	if err = conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}

	doc, err := bson.Marshal(bson.D{{Key: "ping", Value: int32(1)}, {Key: "$db", Value: "admin"}})
	if err != nil {
		return err
	}

	// header: messageLength, requestID, responseTo, opCode (2013 = OP_MSG); flagBits; section kind 0
	msg := make([]byte, 21, 21+len(doc))
	binary.LittleEndian.PutUint32(msg[0:], uint32(21+len(doc)))
	binary.LittleEndian.PutUint32(msg[4:], 1)
	binary.LittleEndian.PutUint32(msg[12:], 2013)
	msg = append(msg, doc...)

	if _, err = conn.Write(msg); err != nil {
		return err
	}

	header := make([]byte, 16)
	if _, err = io.ReadFull(conn, header); err != nil {
		return err
	}

	length := binary.LittleEndian.Uint32(header[0:])
	if length < 21 || length > 16<<20 || binary.LittleEndian.Uint32(header[12:]) != 2013 {
		return fmt.Errorf("unexpected reply header %x", header)
	}

	body := make([]byte, length-16)
	if _, err = io.ReadFull(conn, body); err != nil {
		return err
	}

	if body[4] != 0 {
		return fmt.Errorf("unexpected section kind %d", body[4])
	}

	reply := bson.Raw(body[5:])
	if err = reply.Validate(); err != nil {
		return err
	}

	okValue := reply.Lookup("ok")
	if d, isDouble := okValue.DoubleOK(); isDouble && d == 1 {
		return nil
	}
	if i, isInt := okValue.Int32OK(); isInt && i == 1 {
		return nil
	}

	return fmt.Errorf("reply %s", reply)
}

// dial connects over TCP, or over TLS trusting only caFile when it is given.
func dial(host, caFile string, timeout time.Duration) (net.Conn, error) {
	if caFile == "" {
		return net.DialTimeout("tcp", host, timeout)
	}

	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}

	dialer := &net.Dialer{Timeout: timeout}

	return tls.DialWithDialer(dialer, "tcp", host, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
}
