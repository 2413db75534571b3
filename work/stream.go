package work

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"
)

// chunk is what the executor reads of one streamed event: a chat chunk
// (delta) or a completion chunk (text), the finish reason, the usage, or
// the gateway's error event.
type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index int    `json:"index"`
		Text  string `json:"text"`
		Delta struct {
			Role             string `json:"role"`
			Content          string `json:"content"`
			ReasoningContent string `json:"reasoning_content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
	Error *struct {
		Message string `json:"message"`
		Code    int    `json:"code"`
	} `json:"error"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// readStream reads a streamed answer, sends its text to the job's
// followers as it comes, and assembles the answer a non-streamed request
// would have had (content, finish_reason, usage), which is what the item
// records.
func (e *Executor) readStream(j Job, it Item, resp *http.Response) result {
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var (
		first      chunk
		haveFirst  bool
		text       strings.Builder
		reasoning  strings.Builder
		finish     *string
		u          *usage
		deltas     int
		sawDone    bool
		chatObject = true
	)
	for {
		line, err := br.ReadBytes('\n')
		line = bytes.TrimSpace(line)
		if payload, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			payload = bytes.TrimSpace(payload)
			if bytes.Equal(payload, []byte("[DONE]")) {
				// Read to the end: the gateway counts the answer as
				// delivered once the blank line after [DONE] is written,
				// and a closed pipe before it would log the item as 499.
				io.Copy(io.Discard, br)
				sawDone = true
				break
			}
			var c chunk
			if json.Unmarshal(payload, &c) != nil {
				continue
			}
			if c.Error != nil {
				status := c.Error.Code
				if status == 0 {
					status = http.StatusBadGateway
				}
				return result{out: Outcome{State: Failed, Status: status, Response: payload, Error: c.Error.Message}, retry: retryable(status)}
			}
			if !haveFirst {
				first, haveFirst = c, true
				chatObject = c.Object != "text_completion"
			}
			if c.Usage != nil {
				u = c.Usage
			}
			for _, ch := range c.Choices {
				if ch.Index != 0 {
					continue // n > 1 is not assembled: the first choice only
				}
				piece := ch.Delta.Content + ch.Text
				if piece != "" {
					text.WriteString(piece)
					deltas++
					e.emit(Event{JobID: j.ID, ItemID: it.ID, Seq: it.Seq, Stage: it.Stage, Agent: it.Agent,
						Type: EventDelta, Text: piece, Tokens: deltas})
				}
				reasoning.WriteString(ch.Delta.ReasoningContent)
				if ch.FinishReason != nil {
					finish = ch.FinishReason
				}
			}
		}
		if err != nil {
			break
		}
	}
	if !sawDone {
		return result{out: Outcome{State: Failed, Status: http.StatusBadGateway, Error: "the stream ended without data: [DONE]"}, retry: true}
	}
	tokens := deltas
	if u != nil {
		tokens = u.CompletionTokens
	}
	created := first.Created
	if created == 0 {
		created = time.Now().Unix()
	}
	choice := map[string]any{"index": 0, "finish_reason": finish}
	object := "text_completion"
	if chatObject {
		object = "chat.completion"
		msg := map[string]any{"role": "assistant", "content": text.String()}
		if reasoning.Len() > 0 {
			msg["reasoning_content"] = reasoning.String()
		}
		choice["message"] = msg
	} else {
		choice["text"] = text.String()
	}
	out := map[string]any{"id": first.ID, "object": object, "created": created, "model": first.Model, "choices": []any{choice}}
	if u != nil {
		out["usage"] = u
	}
	b, _ := json.Marshal(out)
	return result{out: Outcome{State: Done, Status: resp.StatusCode, Response: b}, tokens: tokens}
}
