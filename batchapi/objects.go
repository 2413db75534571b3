package batchapi

import "encoding/json"

// The wire objects of OpenAI's Files and Batch APIs, field for field as
// the official Go SDK reads them (github.com/openai/openai-go/v3 v3.98.0:
// file.go FileObject, FileDeleted; batch.go Batch, BatchErrors,
// BatchError, BatchRequestCounts; packages/pagination CursorPage) and as
// OpenAI's API reference describes the batch input and output lines
// (openai-openapi: BatchRequestInput, BatchRequestOutput). objects_test.go
// decodes each one with the SDK's own types.

// Batch statuses (openai-go batch.go BatchStatus).
const (
	StatusValidating = "validating"
	StatusFailed     = "failed"
	StatusInProgress = "in_progress"
	StatusFinalizing = "finalizing"
	StatusCompleted  = "completed"
	StatusExpired    = "expired"
	StatusCancelling = "cancelling"
	StatusCancelled  = "cancelled"
)

// File purposes: uploads take PurposeBatch; the output and error files a
// batch writes have PurposeBatchOutput.
const (
	PurposeBatch       = "batch"
	PurposeBatchOutput = "batch_output"
)

// Endpoints a batch may run.
var endpoints = []string{"/v1/chat/completions", "/v1/completions"}

// completionWindow is the only window OpenAI accepts.
const completionWindow = "24h"

// FileObject is OpenAI's File object.
type FileObject struct {
	ID        string `json:"id"`
	Object    string `json:"object"` // "file"
	Bytes     int64  `json:"bytes"`
	CreatedAt int64  `json:"created_at"`
	Filename  string `json:"filename"`
	Purpose   string `json:"purpose"`
	// Status is deprecated by OpenAI but required by its schema: a stored
	// file is "processed".
	Status string `json:"status"`
}

// FileDeleted answers DELETE /v1/files/{id}.
type FileDeleted struct {
	ID      string `json:"id"`
	Object  string `json:"object"` // "file"
	Deleted bool   `json:"deleted"`
}

// Batch is OpenAI's Batch object. Timestamps are Unix seconds, omitted
// until the batch reaches the state they mark.
type Batch struct {
	ID               string            `json:"id"`
	Object           string            `json:"object"` // "batch"
	Endpoint         string            `json:"endpoint"`
	Errors           *BatchErrors      `json:"errors"`
	InputFileID      string            `json:"input_file_id"`
	CompletionWindow string            `json:"completion_window"`
	Status           string            `json:"status"`
	OutputFileID     *string           `json:"output_file_id"`
	ErrorFileID      *string           `json:"error_file_id"`
	CreatedAt        int64             `json:"created_at"`
	InProgressAt     *int64            `json:"in_progress_at"`
	ExpiresAt        *int64            `json:"expires_at"`
	FinalizingAt     *int64            `json:"finalizing_at"`
	CompletedAt      *int64            `json:"completed_at"`
	FailedAt         *int64            `json:"failed_at"`
	ExpiredAt        *int64            `json:"expired_at"`
	CancellingAt     *int64            `json:"cancelling_at"`
	CancelledAt      *int64            `json:"cancelled_at"`
	RequestCounts    RequestCounts     `json:"request_counts"`
	Metadata         map[string]string `json:"metadata"`
	// Usage sums the answers' usage, once the batch has ended.
	Usage *Usage `json:"usage,omitempty"`
}

// Usage is a batch's token usage (openai-go BatchUsage): the sum of its
// answers' usage, details included where the answers report them.
type Usage struct {
	InputTokens         int64        `json:"input_tokens"`
	InputTokensDetails  cachedTokens `json:"input_tokens_details"`
	OutputTokens        int64        `json:"output_tokens"`
	OutputTokensDetails reasonTokens `json:"output_tokens_details"`
	TotalTokens         int64        `json:"total_tokens"`
}

type cachedTokens struct {
	CachedTokens int64 `json:"cached_tokens"`
}

type reasonTokens struct {
	ReasoningTokens int64 `json:"reasoning_tokens"`
}

// BatchErrors lists what was wrong with a batch's input file.
type BatchErrors struct {
	Object string       `json:"object"` // "list"
	Data   []BatchError `json:"data"`
}

// BatchError is one problem of the input file: its line (1-based) and the
// field (param) at fault when known.
type BatchError struct {
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
	Line    *int    `json:"line"`
}

// RequestCounts counts a batch's requests: Completed answered 2xx, Failed
// did not (invalid lines included); cancelled requests are in neither.
type RequestCounts struct {
	Total     int `json:"total"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
}

// List is OpenAI's cursor page: GET /v1/files and GET /v1/batches. The
// SDK's auto-pager asks for the next page with after=LAST_ID while
// has_more is true.
type List[T any] struct {
	Object  string  `json:"object"` // "list"
	Data    []T     `json:"data"`
	FirstID *string `json:"first_id"`
	LastID  *string `json:"last_id"`
	HasMore bool    `json:"has_more"`
}

// An input line is one request of a batch input file: {"custom_id",
// "method": "POST", "url": the batch's endpoint, "body": the request}.
// parseInput reads it field by field, to name the field at fault.

// outputLine is one line of a batch's output or error file. Response is
// the engine's answer when there was one (in the error file when its
// status is not 2xx); Error says why there was none.
type outputLine struct {
	ID       string          `json:"id"`
	CustomID *string         `json:"custom_id"`
	Response *outputResponse `json:"response"`
	Error    *outputError    `json:"error"`
}

type outputResponse struct {
	StatusCode int             `json:"status_code"`
	RequestID  string          `json:"request_id"`
	Body       json.RawMessage `json:"body"`
}

type outputError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes in BatchError.Code and outputError.Code.
const (
	codeInvalidJSON     = "invalid_json_line"
	codeMissingField    = "missing_required_parameter"
	codeDuplicateID     = "duplicate_custom_id"
	codeInvalidURL      = "invalid_url"
	codeInvalidMethod   = "invalid_method"
	codeInvalidBody     = "invalid_body"
	codeModelNotFound   = "model_not_found"
	codeEmptyFile       = "empty_file"
	codeTooManyErrors   = "too_many_errors"
	codeBatchCancelled  = "batch_cancelled"
	codeRequestFailed   = "request_failed"
	codeNoValidRequests = "no_valid_requests"
)
