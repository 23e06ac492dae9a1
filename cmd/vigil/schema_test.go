package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// vigil schema clickhouse prints deploy/clickhouse/schema.sql.
func TestSchemaClickHouse(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"schema", "clickhouse"}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want, err := os.ReadFile("../../deploy/clickhouse/schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Errorf("vigil schema clickhouse differs from deploy/clickhouse/schema.sql")
	}
	for _, args := range [][]string{{"schema"}, {"schema", "postgres"}} {
		errb.Reset()
		if code := run(args, nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "vigil schema clickhouse") {
			t.Errorf("%q: exit %d, %q; want 2 and the usage", args, code, errb.String())
		}
	}
}
