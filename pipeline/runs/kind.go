package runs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/internal/fsync"
	"github.com/vagent-dev/vagent/pipeline"
	"github.com/vagent-dev/vagent/work"
)

// chatRequest is a stage's request: streamed, so that followers see the
// answer as it comes.
type chatRequest struct {
	Model         string         `json:"model"`
	Messages      []chatMessage  `json:"messages"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options,omitempty"`
	MaxTokens     int            `json:"max_tokens,omitempty"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// Prepare builds a stage's request for one input from the stage's template
// and the same input's earlier answers (work.Kind).
func (r *Runs) Prepare(ctx context.Context, s *work.Store, j work.Job, it work.Item) ([]byte, error) {
	if it.Body != nil {
		return it.Body, nil
	}
	m, err := readMeta(j)
	if err != nil {
		return nil, err
	}
	if it.Stage < 0 || it.Stage >= len(m.Pipeline.Stages) || it.Seq < 0 || it.Seq >= len(m.Inputs) {
		return nil, fmt.Errorf("run %s: item %d: no stage %d of input %d", j.ID, it.ID, it.Stage, it.Seq)
	}
	// The same input's earlier stages, back along the After chain: a few
	// reads whatever the run's size.
	outs := map[string]string{}
	for id, n := it.After, 0; id != 0 && n < len(m.Pipeline.Stages); n++ {
		o, err := s.Item(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("run %s: input %d: an earlier stage: %w", j.ID, it.Seq+1, err)
		}
		if o.Stage < 0 || o.Stage >= len(m.Pipeline.Stages) || o.State != work.Done {
			return nil, fmt.Errorf("run %s: input %d: stage %d is %s, not done", j.ID, it.Seq+1, o.Stage, o.State)
		}
		a, err := ParseAnswer(o.Response)
		if err != nil {
			return nil, fmt.Errorf("run %s: input %d: stage %s's answer: %w", j.ID, it.Seq+1, m.Pipeline.Stages[o.Stage].Name, err)
		}
		outs[m.Pipeline.Stages[o.Stage].Name] = a.Content
		id = o.After
	}
	prompt, err := m.Pipeline.Render(it.Stage, pipeline.Data{Input: m.Inputs[it.Seq], Index: it.Seq + 1, Count: len(m.Inputs), Stages: outs})
	if err != nil {
		return nil, fmt.Errorf("run %s: input %d: %w", j.ID, it.Seq+1, err)
	}
	st := m.Pipeline.Stages[it.Stage]
	req := chatRequest{Model: st.Agent, Stream: true, StreamOptions: &streamOptions{IncludeUsage: true}, MaxTokens: st.MaxTokens}
	if st.System != "" {
		req.Messages = append(req.Messages, chatMessage{Role: "system", Content: st.System})
	}
	req.Messages = append(req.Messages, chatMessage{Role: "user", Content: prompt})
	return json.Marshal(req)
}

// Answer is what a stage's item answered.
type Answer struct {
	Content      string
	FinishReason string
	Usage        json.RawMessage
	Tokens       int
}

// ParseAnswer reads an item's response: a chat completion object (the
// executor assembles a streamed answer into one).
func ParseAnswer(resp []byte) (Answer, error) {
	var v struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage json.RawMessage `json:"usage"`
	}
	if err := json.Unmarshal(resp, &v); err != nil {
		return Answer{}, fmt.Errorf("malformed answer: %w", err)
	}
	if len(v.Choices) == 0 {
		return Answer{}, errors.New("an answer without choices")
	}
	c := v.Choices[0]
	a := Answer{Content: c.Message.Content + c.Text, FinishReason: c.FinishReason, Usage: v.Usage}
	var u struct {
		CompletionTokens int `json:"completion_tokens"`
	}
	if len(v.Usage) > 0 && json.Unmarshal(v.Usage, &u) == nil {
		a.Tokens = u.CompletionTokens
	}
	return a, nil
}

// Finished writes the run directory once the run has ended (work.Kind):
// one Markdown file per input and stage answered, and run.jsonl with every
// item. It is written whole into a temporary directory and renamed, so a
// reader sees all of it or none; a directory already there is the one an
// earlier call wrote (Finished runs again after a crash).
func (r *Runs) Finished(ctx context.Context, s *work.Store, j work.Job) error {
	m, err := readMeta(j)
	if err != nil {
		return err
	}
	dir := filepath.Join(r.cfg.RunsDir(), j.ID)
	if _, err := os.Stat(dir); err != nil {
		items, err := s.Items(ctx, j.ID)
		if err != nil {
			return err
		}
		if err := r.writeDir(dir, j, m, items); err != nil {
			r.log.Error("pipeline run: writing its directory", "run", j.ID, "dir", dir, "err", err)
			_ = s.UpdateJob(ctx, j.ID, func(j *work.Job) error {
				m.Error = err.Error()
				b, merr := json.Marshal(m)
				j.Meta = b
				return merr
			})
			return err
		}
	}
	err = s.UpdateJob(ctx, j.ID, func(jj *work.Job) error {
		m.Dir, m.Error = dir, ""
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		jj.Meta = b
		jj.Status = endStatus(jj.Counts)
		return nil
	})
	if err != nil {
		return err
	}
	r.log.Info("pipeline run ended", "run", j.ID, "pipeline", m.Pipeline.Name, "dir", dir,
		"done", j.Counts[work.Done], "failed", j.Counts[work.Failed], "cancelled", j.Counts[work.Cancelled])
	return nil
}

// Line is one line of run.jsonl: one item of the run.
type Line struct {
	Run          string          `json:"run"`
	Pipeline     string          `json:"pipeline"`
	Input        int             `json:"input"` // from 1
	InputText    string          `json:"input_text"`
	Stage        string          `json:"stage"`
	Agent        string          `json:"agent"`
	State        string          `json:"state"`
	Content      string          `json:"content,omitempty"`
	FinishReason string          `json:"finish_reason,omitempty"`
	Usage        json.RawMessage `json:"usage,omitempty"`
	Error        string          `json:"error,omitempty"`
	// File is the Markdown file holding the answer, in the run directory.
	File string `json:"file,omitempty"`
}

// MarkdownName is the file of input i's (from 0) answer to stage in a run
// of n inputs: zero-padded so that ls lists them in order.
func MarkdownName(i, n int, stage string) string {
	w := len(strconv.Itoa(n))
	return fmt.Sprintf("%0*d-%s.md", w, i+1, stage)
}

// JSONLName is the run directory's file of every item.
const JSONLName = "run.jsonl"

func (r *Runs) writeDir(dir string, j work.Job, m *meta, items []work.Item) error {
	parent := filepath.Dir(dir)
	gid := r.groupID()
	if err := os.MkdirAll(parent, 0o750); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	if err := shareWith(parent, gid); err != nil {
		return err
	}
	// Leftovers of a crash mid-write are garbage: the rename never happened.
	old, _ := filepath.Glob(filepath.Join(parent, "."+j.ID+".tmp*"))
	for _, o := range old {
		os.RemoveAll(o)
	}
	tmp, err := os.MkdirTemp(parent, "."+j.ID+".tmp")
	if err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o750); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	if err := shareWith(tmp, gid); err != nil {
		return err
	}
	var jsonl bytes.Buffer
	enc := json.NewEncoder(&jsonl)
	enc.SetEscapeHTML(false)
	n := len(m.Inputs)
	for _, it := range items {
		if it.Stage >= len(m.Pipeline.Stages) || it.Seq >= n {
			continue
		}
		st := m.Pipeline.Stages[it.Stage]
		l := Line{Run: j.ID, Pipeline: m.Pipeline.Name, Input: it.Seq + 1, InputText: m.Inputs[it.Seq],
			Stage: st.Name, Agent: st.Agent, State: string(it.State), Error: it.Error}
		if it.State == work.Done {
			a, err := ParseAnswer(it.Response)
			if err != nil {
				l.Error = err.Error()
			} else {
				l.Content, l.FinishReason, l.Usage = a.Content, a.FinishReason, a.Usage
			}
			l.File = MarkdownName(it.Seq, n, st.Name)
			md := fmt.Sprintf("# %s (%s): input %d of %d\n\n%s\n\n---\n\n%s\n", st.Name, st.Agent, it.Seq+1, n,
				quote(m.Inputs[it.Seq]), l.Content)
			if err := writeFile(filepath.Join(tmp, l.File), []byte(md), gid); err != nil {
				return err
			}
		}
		if err := enc.Encode(l); err != nil {
			return err
		}
	}
	if err := writeFile(filepath.Join(tmp, JSONLName), jsonl.Bytes(), gid); err != nil {
		return err
	}
	if err := fsync.Dir(tmp); err != nil {
		return fmt.Errorf("run directory: sync %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	ok = true
	if err := fsync.Dir(parent); err != nil {
		return fmt.Errorf("run directory: sync %s: %w", parent, err)
	}
	return nil
}

// quote makes the input a Markdown block quote.
func quote(s string) string {
	var b bytes.Buffer
	for _, l := range bytes.Split([]byte(s), []byte("\n")) {
		b.WriteString("> ")
		b.Write(l)
		b.WriteByte('\n')
	}
	return string(bytes.TrimRight(b.Bytes(), "\n"))
}

// groupID is the control group's id, -1 when there is none: those who may
// submit runs through the control socket may also read their answers.
func (r *Runs) groupID() int {
	g := r.cfg.Gateway.ControlGroup
	if g == "" {
		return -1
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		r.log.Warn("run directory: gateway.control_group", "group", g, "err", err)
		return -1
	}
	id, err := strconv.Atoi(grp.Gid)
	if err != nil {
		return -1
	}
	return id
}

// shareWith gives path to group gid (when not -1 and not already its).
func shareWith(path string, gid int) error {
	if gid < 0 {
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Gid) == gid {
		return nil
	}
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("run directory: give %s to the control group: %w", path, err)
	}
	return nil
}

// writeFile writes data to path durably, mode 0640 (group: gid).
func writeFile(path string, data []byte, gid int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("run directory: write %s: %w", filepath.Base(path), err)
	}
	return shareWith(path, gid)
}

// event turns a work event into a run event.
func event(m *meta, ev work.Event) controlapi.RunEvent {
	re := controlapi.RunEvent{Input: ev.Seq, Agent: ev.Agent, Text: ev.Text, Tokens: ev.Tokens}
	if ev.Stage >= 0 && ev.Stage < len(m.Pipeline.Stages) {
		re.Stage = m.Pipeline.Stages[ev.Stage].Name
	}
	switch ev.Type {
	case work.EventStart:
		re.Type = controlapi.EventStageStart
	case work.EventDelta:
		re.Type = controlapi.EventDelta
		re.Tokens = 0
	case work.EventDone:
		re.Type = controlapi.EventStageDone
		re.Text = "" // the follower saw the deltas
	case work.EventFailed:
		re.Type = controlapi.EventStageFailed
	}
	return re
}
