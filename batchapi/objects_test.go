package batchapi

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/packages/pagination"

	"github.com/vagent-dev/vagent/work"
)

// The objects decode with the official SDK's own types, and every field
// the SDK marks required is present (respjson.Field.Valid: present and of
// the right type).

func TestFileObjectDecodesWithSDK(t *testing.T) {
	b, _ := json.Marshal(fileObject(work.File{ID: "file-abc", Purpose: PurposeBatch, Filename: "in.jsonl", Bytes: 42, CreatedAt: time.Unix(1700000000, 0)}))
	var f openai.FileObject
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.ID != "file-abc" || f.Object != "file" || f.Bytes != 42 || f.CreatedAt != 1700000000 ||
		f.Filename != "in.jsonl" || f.Purpose != openai.FileObjectPurposeBatch || f.Status != openai.FileObjectStatusProcessed {
		t.Errorf("SDK read %s as %+v", b, f)
	}
	for name, fl := range map[string]bool{"id": f.JSON.ID.Valid(), "bytes": f.JSON.Bytes.Valid(), "created_at": f.JSON.CreatedAt.Valid(),
		"filename": f.JSON.Filename.Valid(), "object": f.JSON.Object.Valid(), "purpose": f.JSON.Purpose.Valid(), "status": f.JSON.Status.Valid()} {
		if !fl {
			t.Errorf("required field %s is not valid for the SDK in %s", name, b)
		}
	}
	b, _ = json.Marshal(FileDeleted{ID: "file-abc", Object: "file", Deleted: true})
	var d openai.FileDeleted
	if err := json.Unmarshal(b, &d); err != nil || d.ID != "file-abc" || !d.Deleted || d.Object != "file" {
		t.Errorf("SDK read %s as %+v (%v)", b, d, err)
	}
}

func TestBatchDecodesWithSDK(t *testing.T) {
	line, param := 3, "body.model"
	out, errf := "file-out", "file-err"
	ts := func(v int64) *int64 { return &v }
	b, _ := json.Marshal(Batch{
		ID: "batch_1", Object: "batch", Endpoint: "/v1/chat/completions", InputFileID: "file-in",
		CompletionWindow: "24h", Status: StatusCompleted, OutputFileID: &out, ErrorFileID: &errf,
		CreatedAt: 1, InProgressAt: ts(2), ExpiresAt: ts(3), FinalizingAt: ts(4), CompletedAt: ts(5),
		Errors:        &BatchErrors{Object: "list", Data: []BatchError{{Code: codeModelNotFound, Message: "line 3: no", Param: &param, Line: &line}}},
		RequestCounts: RequestCounts{Total: 10, Completed: 9, Failed: 1},
		Metadata:      map[string]string{"k": "v"},
		Usage:         &Usage{InputTokens: 6, OutputTokens: 9, TotalTokens: 15},
	})
	var got openai.Batch
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != "batch_1" || got.Object != "batch" || got.Endpoint != "/v1/chat/completions" || got.InputFileID != "file-in" ||
		got.CompletionWindow != "24h" || got.Status != openai.BatchStatusCompleted || got.OutputFileID != out || got.ErrorFileID != errf ||
		got.CreatedAt != 1 || got.InProgressAt != 2 || got.ExpiresAt != 3 || got.FinalizingAt != 4 || got.CompletedAt != 5 ||
		got.RequestCounts.Total != 10 || got.RequestCounts.Completed != 9 || got.RequestCounts.Failed != 1 || got.Metadata["k"] != "v" {
		t.Errorf("SDK read %s as %+v", b, got)
	}
	u := got.Usage
	if u.InputTokens != 6 || u.OutputTokens != 9 || u.TotalTokens != 15 || !u.JSON.InputTokensDetails.Valid() ||
		!u.InputTokensDetails.JSON.CachedTokens.Valid() || !u.OutputTokensDetails.JSON.ReasoningTokens.Valid() {
		t.Errorf("SDK read usage as %+v", u)
	}
	if len(got.Errors.Data) != 1 || got.Errors.Data[0].Line != 3 || got.Errors.Data[0].Param != "body.model" || got.Errors.Data[0].Code != codeModelNotFound {
		t.Errorf("SDK read errors as %+v", got.Errors)
	}
	for name, fl := range map[string]bool{"id": got.JSON.ID.Valid(), "completion_window": got.JSON.CompletionWindow.Valid(),
		"created_at": got.JSON.CreatedAt.Valid(), "endpoint": got.JSON.Endpoint.Valid(), "input_file_id": got.JSON.InputFileID.Valid(),
		"object": got.JSON.Object.Valid(), "status": got.JSON.Status.Valid(), "request_counts": got.JSON.RequestCounts.Valid()} {
		if !fl {
			t.Errorf("required field %s is not valid for the SDK in %s", name, b)
		}
	}
	// A batch in progress: the timestamps of later states are null.
	b, _ = json.Marshal(Batch{ID: "batch_2", Object: "batch", Status: StatusInProgress, InProgressAt: ts(2)})
	got = openai.Batch{}
	if err := json.Unmarshal(b, &got); err != nil || got.CompletedAt != 0 || got.JSON.CompletedAt.Valid() || !got.JSON.InProgressAt.Valid() {
		t.Errorf("SDK read %s as %+v (%v)", b, got, err)
	}
}

func TestListDecodesWithSDK(t *testing.T) {
	first, last := "batch_2", "batch_1"
	b, _ := json.Marshal(List[Batch]{Object: "list", Data: []Batch{{ID: "batch_2", Object: "batch"}, {ID: "batch_1", Object: "batch"}},
		FirstID: &first, LastID: &last, HasMore: true})
	var page pagination.CursorPage[openai.Batch]
	if err := json.Unmarshal(b, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 2 || page.Data[1].ID != "batch_1" || !page.HasMore || !page.JSON.HasMore.Valid() {
		t.Errorf("SDK read %s as %+v", b, page)
	}
}
