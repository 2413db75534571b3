package pipeline

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// MaxInputBytes bounds one input, so that one bad line cannot make a
// request no agent's context holds.
const MaxInputBytes = 1 << 20

// ReadInputs reads an inputs file (name is for errors): one input a line;
// blank lines and lines starting with # are skipped; a line starting with
// '"' is one JSON string, for inputs that span lines. A bad line is an
// error naming name:line, and nothing is returned.
func ReadInputs(name string, r io.Reader) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxInputBytes+1)
	var out []string
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		switch {
		case !utf8.ValidString(line):
			return nil, fmt.Errorf("%s:%d: not valid UTF-8", name, n)
		case line == "" || line[0] == '#':
			continue
		case line[0] == '"':
			var s string
			if err := json.Unmarshal([]byte(line), &s); err != nil {
				return nil, fmt.Errorf("%s:%d: a line starting with '\"' is one JSON string: %v", name, n, err)
			}
			line = s
		}
		if strings.TrimSpace(line) == "" {
			return nil, fmt.Errorf("%s:%d: an empty input", name, n)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return nil, fmt.Errorf("%s:%d: a line longer than %d bytes", name, n+1, MaxInputBytes)
		}
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no inputs (one a line; blank lines and lines starting with # are skipped)", name)
	}
	return out, nil
}
