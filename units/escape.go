package units

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/vagent-dev/vagent/config"
)

// maxLine is systemd's LONG_LINE_MAX: a longer line, or a directive whose
// continuation lines add up to more, makes the whole unit file fail to
// load, so rendering refuses it instead.
const maxLine = 1 << 20

// maxArg is the kernel's MAX_ARG_STRLEN less the NUL: execve refuses a
// longer argument or environment string (E2BIG), so the engine could never
// start.
const maxArg = 32*4096 - 1

// checkText rejects what no escaping can carry through a unit file: a
// newline or carriage return ends the line (and would start a new directive),
// NUL cannot be passed to a process, and invalid UTF-8 makes systemd drop an
// Environment= assignment with only a warning.
func checkText(s string) error {
	if strings.ContainsAny(s, "\n\r\x00") {
		return errors.New("must not contain a newline, carriage return or NUL byte")
	}
	if !utf8.ValidString(s) {
		return errors.New("must be valid UTF-8")
	}
	return nil
}

// safeByte reports whether c stands for itself in an unquoted word of a
// systemd command line or assignment list. Everything else forces quoting;
// in particular '#' and ';' do, so that no rendered continuation line can
// start like a comment and no word is a bare ";" (a command separator).
func safeByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-_./:=,+@", c) >= 0
}

// quoteWord renders s as one word in systemd's syntax for ExecStart= and
// Environment= (both split with extract_first_word(EXTRACT_UNQUOTE|
// EXTRACT_CUNESCAPE), then expand specifiers in each word). '%' is doubled
// everywhere, since specifiers are expanded after unquoting. dollar doubles
// '$' too: ExecStart= expands $VAR and ${VAR} when the process starts, while
// in Environment= '$' has no special meaning and doubling it would be kept.
// A word that needs quoting is put in single quotes when it holds a double
// quote but no single quote (JSON stays readable), else in double quotes;
// inside, backslash and the quote are backslash-escaped and other control
// characters written as \xNN. force quotes even a word that needs none.
func quoteWord(s string, dollar, force bool) (string, error) {
	if err := checkText(s); err != nil {
		return "", err
	}
	quote := force || s == ""
	for i := 0; i < len(s); i++ {
		if !safeByte(s[i]) {
			quote = true
			break
		}
	}
	var b strings.Builder
	q := byte('"')
	if strings.IndexByte(s, '"') >= 0 && strings.IndexByte(s, '\'') < 0 {
		q = '\''
	}
	if quote {
		b.WriteByte(q)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '%':
			b.WriteString("%%")
		case c == '$' && dollar:
			b.WriteString("$$")
		case c == '\\' || c == q:
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	if quote {
		b.WriteByte(q)
	}
	return b.String(), nil
}

// plainValue renders s as the whole value of a directive that takes it
// literally apart from specifiers (EnvironmentFile=, User=, Group=): '%' is
// doubled. Such values are not unquoted, and systemd strips surrounding
// whitespace, so a value that starts or ends with whitespace or holds a
// control character is refused rather than silently changed.
func plainValue(s string) (string, error) {
	if err := checkText(s); err != nil {
		return "", err
	}
	if s != strings.TrimSpace(s) {
		return "", errors.New("must not start or end with whitespace")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return "", errors.New("must not contain control characters")
		}
	}
	return strings.ReplaceAll(s, "%", "%%"), nil
}

// envFilePath renders the path p as the value of EnvironmentFile=: taken
// literally apart from specifiers (as plainValue), then, when the unit
// starts, expanded as a glob(3) pattern (exec_context_load_environment), so
// that '*', '?', '[' and '\\' are backslash-escaped: unescaped, a path
// holding them names no file (the engine would not start) or other files.
// A path systemd would ignore is refused (config.CheckPath): the engine
// would start without its key.
func envFilePath(p string) (string, error) {
	if err := config.CheckPath(p); err != nil {
		return "", err
	}
	v, err := plainValue(p)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if strings.IndexByte(`*?[\`, v[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	return b.String(), nil
}

// pathWord renders prefix+p, for an absolute path p, as one word of a
// path-list directive (ReadWritePaths= and the other namespace path lists).
// systemd splits those with extract_first_word(EXTRACT_UNQUOTE) alone: no C
// unescaping, so a backslash keeps just the byte after it and "\x09" reads
// as "x09". A word with anything but safeByte is double-quoted (a path may
// hold spaces); '\' and '"' are backslash-escaped and '%' doubled (specifiers are expanded after
// unquoting). A control character could only be written raw into the unit
// file: it is refused, as config refuses it in every path, and so is a path
// that is not absolute and normalized, which systemd would ignore.
func pathWord(prefix, p string) (string, error) {
	if err := config.CheckPath(p); err != nil {
		return "", err
	}
	quote := false
	for i := 0; i < len(p); i++ {
		quote = quote || !safeByte(p[i])
	}
	var b strings.Builder
	if quote {
		b.WriteByte('"')
	}
	b.WriteString(prefix)
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '%':
			b.WriteString("%%")
		case '\\', '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	if quote {
		b.WriteByte('"')
	}
	return b.String(), nil
}

// commentText renders s for a comment line: as it is when it is printable
// UTF-8, else Go-quoted, so that no byte can end the comment.
func commentText(s string) string {
	if checkText(s) == nil && !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return s
	}
	return fmt.Sprintf("%q", s)
}
