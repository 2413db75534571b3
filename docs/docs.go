// Package docs is vagent's documentation: the Markdown files beside this
// one. The Go code here is what the tests that keep them true share: a
// reader of fenced code blocks, and the rule by which a quoted message or
// sample output is checked against what the code really prints.
//
// Two kinds of blocks are checked:
//
//   - ```text vagent-message id=ID: a message vagent (or vLLM, through
//     vagent) prints. Every ID is produced from the real code path by a test
//     (messages_test.go here, and doc_messages_test.go in ctl and
//     supervisor for what needs their unexported parts), and the block must
//     Match what it produced.
//   - ```sh sim, then optionally ```text sim-output: the quick start's
//     simulator path, which e2e/quickstart_test.go runs in a throwaway
//     systemd, matching each sample output against what the commands
//     printed.
//   - ```text e2e-output id=ID: what a real systemd prints, which an e2e
//     test (named in the block's ID's test) produces in a throwaway
//     systemd and Matches.
//
// Every ```text block is one of these: TestEverySampleIsChecked fails on
// a sample no test produces.
//
// Match's rule, which the documents state too: lines are compared with runs
// of blanks collapsed and blank lines ignored; <...> or a lower-case
// <name> (letters, digits, spaces and . _ / @ -) stands for a varying part
// of one line; a line that is only "..."
// stands for any number of lines; the block must match consecutive lines of
// the output, except where "..." allows more.
package docs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Block is one fenced code block of a Markdown file.
type Block struct {
	File string // the file's path as given
	Line int    // line of the opening fence, from 1
	// Info is the whole info string after the fence ("text vagent-message id=x").
	Info string
	// Lang is its first word ("text", "sh").
	Lang string
	// Words are the other words; Attrs holds those of the form key=value.
	Words []string
	Attrs map[string]string
	// Text is the content between the fences, each line ending in "\n".
	Text string
}

// Has reports whether word is one of the block's words after the language.
func (b Block) Has(word string) bool {
	for _, w := range b.Words {
		if w == word {
			return true
		}
	}
	return false
}

// Where is "file:line" of the block, for test messages.
func (b Block) Where() string { return fmt.Sprintf("%s:%d", b.File, b.Line) }

// ParseBlocks returns the fenced code blocks (``` or ~~~, three or more) of
// a Markdown document. An unclosed block runs to the end of the document.
func ParseBlocks(file string, data []byte) []Block {
	var out []Block
	var cur *Block
	var fence string
	var text strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " ")
		if cur == nil {
			f := fenceOf(trimmed)
			if f == "" {
				continue
			}
			info := strings.TrimSpace(trimmed[len(f):])
			words := strings.Fields(info)
			b := Block{File: file, Line: n, Info: info, Attrs: map[string]string{}}
			if len(words) > 0 {
				b.Lang, b.Words = words[0], words[1:]
			}
			for _, w := range b.Words {
				if k, v, ok := strings.Cut(w, "="); ok {
					b.Attrs[k] = v
				}
			}
			cur, fence = &b, f
			text.Reset()
			continue
		}
		if f := fenceOf(trimmed); f != "" && strings.HasPrefix(f, fence) && strings.TrimSpace(trimmed[len(f):]) == "" {
			cur.Text = text.String()
			out = append(out, *cur)
			cur = nil
			continue
		}
		text.WriteString(line)
		text.WriteByte('\n')
	}
	if cur != nil {
		cur.Text = text.String()
		out = append(out, *cur)
	}
	return out
}

// fenceOf returns the fence that opens line (``` or ~~~ repeated), or "".
func fenceOf(line string) string {
	for _, c := range []byte{'`', '~'} {
		i := 0
		for i < len(line) && line[i] == c {
			i++
		}
		if i >= 3 {
			return line[:i]
		}
	}
	return ""
}

// Files returns the Markdown files of dir, sorted.
func Files(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.md"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	return files, nil
}

// ReadBlocks returns the fenced code blocks of the Markdown file path.
func ReadBlocks(path string) ([]Block, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseBlocks(path, data), nil
}

// MessageKind is the word that marks a checked message block.
const MessageKind = "vagent-message"

// E2EKind is the word that marks a sample an e2e test produces in a real
// systemd (see E2EBlock).
const E2EKind = "e2e-output"

// E2EBlock returns the block ```text e2e-output id=ID of the Markdown files
// in dir.
func E2EBlock(dir, id string) (Block, error) {
	files, err := Files(dir)
	if err != nil {
		return Block{}, err
	}
	for _, f := range files {
		blocks, err := ReadBlocks(f)
		if err != nil {
			return Block{}, err
		}
		for _, b := range blocks {
			if b.Lang == "text" && b.Has(E2EKind) && b.Attrs["id"] == id {
				return b, nil
			}
		}
	}
	return Block{}, fmt.Errorf("no ```text %s id=%s in %s", E2EKind, id, dir)
}

// Messages returns the message blocks (```text vagent-message id=ID) of
// every Markdown file in dir, by ID. A block without an id, or an id used
// twice, is an error.
func Messages(dir string) (map[string]Block, error) {
	files, err := Files(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]Block{}
	for _, f := range files {
		blocks, err := ReadBlocks(f)
		if err != nil {
			return nil, err
		}
		for _, b := range blocks {
			if !b.Has(MessageKind) && !strings.Contains(b.Info, MessageKind) {
				continue
			}
			id := b.Attrs["id"]
			if id == "" || b.Lang != "text" || !b.Has(MessageKind) {
				return nil, fmt.Errorf("%s: a message block is written ```text %s id=ID, not ```%s", b.Where(), MessageKind, b.Info)
			}
			if prev, dup := out[id]; dup {
				return nil, fmt.Errorf("%s: message id %q is also used at %s", b.Where(), id, prev.Where())
			}
			out[id] = b
		}
	}
	return out, nil
}

var (
	blanksRE      = regexp.MustCompile(`[ \t]+`)
	placeholderRE = regexp.MustCompile(`<\.\.\.>|<[a-z][a-z0-9 ._/@-]*>`)
)

// normalize splits text into lines with runs of blanks collapsed to one
// space and ends trimmed, leaving out blank lines.
func normalize(text string) []string {
	var out []string
	for _, l := range strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n") {
		l = strings.TrimSpace(blanksRE.ReplaceAllString(l, " "))
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// LineRegexp is the regular expression a normalized line of a documented
// block stands for: the line itself, with each placeholder matching any
// non-empty text (<...>: any text, even none).
func LineRegexp(line string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	last := 0
	for _, m := range placeholderRE.FindAllStringIndex(line, -1) {
		b.WriteString(regexp.QuoteMeta(line[last:m[0]]))
		if line[m[0]:m[1]] == "<...>" {
			b.WriteString("(?:.*?)")
		} else {
			b.WriteString("(?:.+?)")
		}
		last = m[1]
	}
	b.WriteString(regexp.QuoteMeta(line[last:]))
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// Match reports whether output shows the documented block text, by the
// rule in the package comment; the error says which documented line was not
// found.
func Match(text, output string) error {
	doc := normalize(text)
	out := normalize(output)
	if len(doc) == 0 {
		return fmt.Errorf("the documented block is empty")
	}
	var segs [][]*regexp.Regexp
	var raw [][]string
	cur := []*regexp.Regexp{}
	curRaw := []string{}
	for _, l := range doc {
		if l == "..." {
			if len(cur) > 0 {
				segs, raw = append(segs, cur), append(raw, curRaw)
			}
			cur, curRaw = []*regexp.Regexp{}, []string{}
			continue
		}
		cur = append(cur, LineRegexp(l))
		curRaw = append(curRaw, l)
	}
	if len(cur) > 0 {
		segs, raw = append(segs, cur), append(raw, curRaw)
	}
	pos := 0
	for si, seg := range segs {
		found := -1
		best, bestAt := -1, -1 // longest partial match, for the error
		for i := pos; i < len(out); i++ {
			k := 0
			for k < len(seg) && i+k < len(out) && seg[k].MatchString(out[i+k]) {
				k++
			}
			if k == len(seg) {
				found = i
				break
			}
			if k > best {
				best, bestAt = k, i
			}
		}
		if found < 0 {
			missing := raw[si][0]
			near := ""
			if best > 0 {
				missing = raw[si][best]
				if bestAt+best < len(out) {
					near = fmt.Sprintf(" (after %d matching lines the output has %q)", best, out[bestAt+best])
				}
			}
			return fmt.Errorf("documented line %q not found in order in the output%s", missing, near)
		}
		pos = found + len(seg)
	}
	return nil
}
