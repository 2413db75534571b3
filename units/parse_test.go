package units

// A small model of how systemd 252 reads a unit file (src/shared/conf-parser.c)
// and splits ExecStart= and Environment= (extract_first_word with
// EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE, then specifiers, then $-expansion for
// commands). The tests parse rendered units with it to prove that escaping
// round-trips and that no value adds or hides a directive. It is strict where
// systemd would accept something vagent never means to write (an unknown
// specifier, ${VAR}, a bare ";"), so such output fails the tests.

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

type directive struct {
	section, key, value string
}

// parseUnit splits a unit file into its directives, in order.
func parseUnit(text string) ([]directive, error) {
	// read_line ends a line at \n, \r, \r\n or NUL.
	lines := strings.Split(strings.NewReplacer("\r\n", "\n", "\r", "\n", "\x00", "\n").Replace(text), "\n")
	var out []directive
	section := ""
	var cont *string
	for n, raw := range lines {
		if len(raw) >= maxLine {
			return nil, fmt.Errorf("line %d: longer than LONG_LINE_MAX", n+1)
		}
		// Comment lines are skipped even inside a continuation.
		if l := strings.TrimLeft(raw, " \t\n\r"); l != "" && strings.ContainsRune("#;", rune(l[0])) {
			continue
		}
		p := raw
		if cont != nil {
			p = *cont + raw
		}
		escaped := false
		for i := 0; i < len(p); i++ {
			if escaped {
				escaped = false
			} else if p[i] == '\\' {
				escaped = true
			}
		}
		if escaped {
			s := p[:len(p)-1] + " "
			cont = &s
			continue
		}
		cont = nil
		l := strings.Trim(p, " \t\n\r")
		if l == "" {
			continue
		}
		if !utf8.ValidString(l) {
			return nil, fmt.Errorf("line %d: invalid UTF-8", n+1)
		}
		if l[0] == '[' {
			if l[len(l)-1] != ']' {
				return nil, fmt.Errorf("line %d: bad section header %q", n+1, l)
			}
			section = l[1 : len(l)-1]
			continue
		}
		if section == "" {
			return nil, fmt.Errorf("line %d: assignment outside of a section", n+1)
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: missing '=': %q", n+1, l)
		}
		out = append(out, directive{section, strings.Trim(k, " \t\n\r"), strings.Trim(v, " \t\n\r")})
	}
	if cont != nil {
		// A last line ending in a backslash is parsed as it stands.
		l := strings.Trim(*cont, " \t\n\r")
		if k, v, ok := strings.Cut(l, "="); ok && section != "" {
			out = append(out, directive{section, strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	return out, nil
}

const whitespace = " \t\n\r"

// nextWord is extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE): it
// returns the first word of s, unquoted and C-unescaped, and the rest.
// ok is false when s holds no more words.
func nextWord(s string) (word, rest string, ok bool, err error) { return extractWord(s, true) }

// extractWord is extract_first_word with EXTRACT_UNQUOTE, and with
// EXTRACT_CUNESCAPE when unescape is set; without it a backslash keeps
// only the byte after it.
func extractWord(s string, unescape bool) (word, rest string, ok bool, err error) {
	s = strings.TrimLeft(s, whitespace)
	if s == "" {
		return "", "", false, nil
	}
	var b strings.Builder
	var quote byte
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == '\\' && !unescape:
			if i+1 >= len(s) {
				return "", "", false, fmt.Errorf("backslash at end")
			}
			b.WriteByte(s[i+1])
			i += 2
			continue
		case c == '\\':
			n, width, err := cunescape(s[i+1:])
			if err != nil {
				return "", "", false, err
			}
			b.WriteString(n)
			i += 1 + width
			continue
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			b.WriteByte(c)
		case c == '\'' || c == '"':
			quote = c
		case strings.IndexByte(whitespace, c) >= 0:
			return b.String(), s[i:], true, nil
		default:
			b.WriteByte(c)
		}
		i++
	}
	if quote != 0 {
		return "", "", false, fmt.Errorf("unbalanced quoting")
	}
	return b.String(), "", true, nil
}

// cunescape is cunescape_one: the escape after a backslash, and how many
// bytes of s it used.
func cunescape(s string) (string, int, error) {
	if s == "" {
		return "", 0, fmt.Errorf("backslash at end")
	}
	simple := map[byte]string{'a': "\a", 'b': "\b", 'f': "\f", 'n': "\n", 'r': "\r", 't': "\t", 'v': "\v",
		'\\': "\\", '"': "\"", '\'': "'", 's': " "}
	if v, ok := simple[s[0]]; ok {
		return v, 1, nil
	}
	hex := func(n int) (string, int, error) {
		if len(s) < 1+n {
			return "", 0, fmt.Errorf("short escape")
		}
		v, err := strconv.ParseUint(s[1:1+n], 16, 32)
		if err != nil || v == 0 {
			return "", 0, fmt.Errorf("bad escape \\%s", s[:1+n])
		}
		if n == 2 {
			return string([]byte{byte(v)}), 1 + n, nil
		}
		return string(rune(v)), 1 + n, nil
	}
	switch s[0] {
	case 'x':
		return hex(2)
	case 'u':
		return hex(4)
	case 'U':
		return hex(8)
	}
	if s[0] >= '0' && s[0] <= '7' && len(s) >= 3 {
		v, err := strconv.ParseUint(s[:3], 8, 16)
		if err != nil || v == 0 || v > 255 {
			return "", 0, fmt.Errorf("bad octal escape")
		}
		return string([]byte{byte(v)}), 3, nil
	}
	return "", 0, fmt.Errorf("unknown escape \\%c", s[0])
}

// unspecify expands specifiers strictly: "%%" is '%'; any other specifier
// is an error, since vagent never means one in an agent's values.
func unspecify(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("specifier %q in %q", s[i:min(i+2, len(s))], s)
	}
	return b.String(), nil
}

// undollar is replace_env_argv for one argument: "$$" is '$'; a word that
// starts with '$' and a name would be split up, and "${" substituted, so
// both are errors.
func undollar(s string) (string, error) {
	if strings.HasPrefix(s, "$") && !strings.HasPrefix(s, "$$") && !strings.HasPrefix(s, "${") {
		return "", fmt.Errorf("word %q would be replaced by a variable", s)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			return "", fmt.Errorf("%q holds a ${VAR} expansion", s)
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), nil
}

// parseExec is config_parse_exec plus the $-expansion at start: the
// executable and its argument list.
func parseExec(v string) ([]string, error) {
	var argv []string
	rest := v
	for first := true; ; first = false {
		t := strings.TrimLeft(rest, whitespace)
		if !first && (t == ";" || strings.HasPrefix(t, "; ") || strings.HasPrefix(t, ";\t")) {
			return nil, fmt.Errorf("command separator ';' in %q", v)
		}
		if !first && strings.HasPrefix(t, `\;`) {
			return nil, fmt.Errorf(`escaped separator \; in %q`, v)
		}
		w, r, ok, err := nextWord(rest)
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		rest = r
		if first && w != "" && strings.ContainsRune("-@:+!", rune(w[0])) {
			return nil, fmt.Errorf("executable %q has a prefix", w)
		}
		if w, err = unspecify(w); err != nil {
			return nil, err
		}
		if !first {
			if w, err = undollar(w); err != nil {
				return nil, err
			}
		}
		argv = append(argv, w)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("empty command")
	}
	return argv, nil
}

// parseEnv is config_parse_environ: the assignments of one Environment=
// line, in order.
func parseEnv(v string) ([][2]string, error) {
	var out [][2]string
	rest := v
	for {
		w, r, ok, err := nextWord(rest)
		if err != nil {
			return nil, err
		}
		if !ok {
			return out, nil
		}
		rest = r
		if w, err = unspecify(w); err != nil {
			return nil, err
		}
		k, val, ok := strings.Cut(w, "=")
		if !ok || !envNameRE.MatchString(k) || !utf8.ValidString(val) {
			return nil, fmt.Errorf("invalid assignment %q (systemd ignores it)", w)
		}
		out = append(out, [2]string{k, val})
	}
}

// parsePathList is config_parse_namespace_path_strv (ReadWritePaths= and
// the other namespace path lists): words split with EXTRACT_UNQUOTE only,
// an optional "-" (missing is no error) and "+" prefix, specifiers, then
// path_simplify_and_warn, which ignores a path that is not absolute, has a
// ".." component, or breaks PATH_MAX or NAME_MAX. It is strict: a path
// systemd would ignore is an error.
func parsePathList(v string) ([]string, error) {
	var out []string
	for rest := v; ; {
		w, r, ok, err := extractWord(rest, false)
		if err != nil {
			return nil, err
		}
		if !ok {
			return out, nil
		}
		rest = r
		prefix := ""
		if strings.HasPrefix(w, "-") {
			prefix, w = "-", w[1:]
		}
		if w, err = unspecify(w); err != nil {
			return nil, err
		}
		if err := systemdPathOK(w); err != nil {
			return nil, err
		}
		out = append(out, prefix+w)
	}
}

// systemdPathOK is path_simplify_and_warn(PATH_CHECK_ABSOLUTE) on a path
// that vagent means literally: UTF-8, absolute, no ".." component (".",
// "//" and a trailing "/" it would simplify, but vagent never writes them),
// components of at most NAME_MAX and the whole under PATH_MAX.
func systemdPathOK(p string) error {
	if !utf8.ValidString(p) || !strings.HasPrefix(p, "/") || len(p) >= 4096 {
		return fmt.Errorf("path %q: not UTF-8, not absolute or too long", p)
	}
	for _, c := range strings.Split(p[1:], "/") {
		if c == "" || c == "." || c == ".." || len(c) > 255 {
			return fmt.Errorf("path %q: component %q", p, c)
		}
	}
	return nil
}

// unglob is glob(3) without GLOB_NOESCAPE on a pattern vagent means as one
// literal path, as EnvironmentFile= is expanded when a unit starts: a
// backslash keeps the byte after it, and an unescaped '*', '?' or '[' is an
// error (the path would match other files, or none).
func unglob(p string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '\\' && i+1 < len(p):
			i++
			b.WriteByte(p[i])
		case strings.IndexByte(`*?[\`, c) >= 0:
			return "", fmt.Errorf("glob pattern %q: unescaped %q", p, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}
