package batchapi

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/work"
)

// multipartSlack is what a multipart upload may carry besides its file:
// boundaries, part headers, the purpose field.
const multipartSlack = 64 << 10

func fileObject(f work.File) FileObject {
	return FileObject{ID: f.ID, Object: "file", Bytes: f.Bytes, CreatedAt: f.CreatedAt.Unix(),
		Filename: f.Filename, Purpose: f.Purpose, Status: "processed"}
}

func (a *API) tooLarge(w http.ResponseWriter) error {
	// What is left of the body is not read: the connection closes after
	// the answer.
	w.Header().Set("Connection", "close")
	return gateway.Error(http.StatusRequestEntityTooLarge, "file",
		"the file is larger than %d MiB ([batch] max_file_mib)", a.o.MaxFileMiB)
}

// uploadFile stores the "file" part of a multipart upload as it arrives,
// never holding it in memory: a body that says it is larger than the limit
// is refused before a byte is read, and one that turns out larger is cut
// at the limit with nothing stored.
func (a *API) uploadFile(w http.ResponseWriter, r *http.Request, caller string) error {
	if !isMultipart(r) {
		return gateway.Error(http.StatusUnsupportedMediaType, "", "POST /v1/files takes multipart/form-data with fields file and purpose=batch")
	}
	if r.ContentLength > int64(a.o.MaxFileMiB)<<20+multipartSlack {
		return a.tooLarge(w)
	}
	defer a.bodyDeadline(w)()
	mr, err := r.MultipartReader()
	if err != nil {
		return badRequest("", "reading the multipart body: %v", err)
	}
	var (
		stored  *work.File
		purpose string
		seen    bool
	)
	// Whatever goes wrong after the file is stored takes it away again,
	// even when the client has gone.
	keep := false
	defer func() {
		if stored != nil && !keep {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
			defer cancel()
			if err := a.o.Store.DeleteFile(ctx, stored.ID); err != nil {
				a.o.Log.Warn("removing a refused upload", "file", stored.ID, "err", err)
			}
		}
	}()
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return a.bodyError(w, err)
			}
			w.Header().Set("Connection", "close")
			return badRequest("", "reading the multipart body: %v", err)
		}
		switch part.FormName() {
		case "purpose":
			b, err := io.ReadAll(io.LimitReader(part, 256))
			if err != nil {
				return a.bodyError(w, err)
			}
			purpose, seen = string(b), true
		case "file":
			if stored != nil {
				return badRequest("file", "more than one file part: upload one file per request")
			}
			if seen && purpose != PurposeBatch {
				// Refused before the file is read or stored.
				w.Header().Set("Connection", "close")
				return errPurpose(purpose)
			}
			name := part.FileName()
			if name == "" {
				name = "upload.jsonl"
			}
			if len(name) > 255 {
				return badRequest("file", "the file name is %d bytes long: at most 255", len(name))
			}
			f, err := putFile(r.Context(), a.o.Store, caller, PurposeBatch, name, part, int64(a.o.MaxFileMiB)<<20)
			if errors.Is(err, work.ErrTooLarge) {
				return a.tooLarge(w)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return a.bodyError(w, err)
			}
			if err != nil {
				return storeError("store the upload", err)
			}
			stored = &f
		default:
			// Other fields (expires_after[...]) are accepted and ignored.
			io.Copy(io.Discard, io.LimitReader(part, 1<<20))
		}
	}
	switch {
	case seen && purpose != PurposeBatch:
		return errPurpose(purpose)
	case stored == nil:
		return badRequest("file", "no file part: send the JSONL as the multipart field \"file\"")
	case !seen:
		return badRequest("purpose", "purpose is missing: send purpose=batch")
	}
	keep = true
	return writeJSON(w, fileObject(*stored))
}

func errPurpose(purpose string) error {
	return badRequest("purpose", "purpose %q is not supported: vagent keeps files for the Batch API only (purpose \"batch\")", purpose)
}

// file returns the caller's file id: 404 when it does not exist or is
// another key's.
func (a *API) file(r *http.Request, caller, id string) (work.File, error) {
	f, err := a.o.Store.File(r.Context(), id)
	if errors.Is(err, work.ErrNotFound) || (err == nil && !ownsFile(f, caller)) {
		return work.File{}, notFound("file", id)
	}
	if err != nil {
		return work.File{}, storeError("read file "+id, err)
	}
	return f, nil
}

func (a *API) getFile(w http.ResponseWriter, r *http.Request, caller string) error {
	f, err := a.file(r, caller, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, fileObject(f))
}

func (a *API) fileContent(w http.ResponseWriter, r *http.Request, caller string) error {
	f, err := a.file(r, caller, r.PathValue("id"))
	if err != nil {
		return err
	}
	rc, err := a.o.Store.OpenFile(r.Context(), f.ID)
	if err != nil {
		return storeError("open file "+f.ID, err)
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(f.Bytes, 10))
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": f.Filename}))
	io.Copy(w, rc)
	return nil
}

func (a *API) deleteFile(w http.ResponseWriter, r *http.Request, caller string) error {
	f, err := a.file(r, caller, r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := a.o.Store.DeleteFile(r.Context(), f.ID); err != nil {
		if errors.Is(err, work.ErrNotFound) {
			return notFound("file", f.ID)
		}
		return storeError("delete file "+f.ID, err)
	}
	return writeJSON(w, FileDeleted{ID: f.ID, Object: "file", Deleted: true})
}

func (a *API) listFiles(w http.ResponseWriter, r *http.Request, caller string) error {
	p, err := readPage(r)
	if err != nil {
		return err
	}
	purpose := r.URL.Query().Get("purpose")
	files, more, err := a.listOwnFiles(r, caller, purpose, p)
	if errors.Is(err, work.ErrNotFound) {
		return badRequest("after", "after %q: no such file", p.after)
	}
	if err != nil {
		return storeError("list files", err)
	}
	objs := make([]FileObject, len(files))
	for i, f := range files {
		objs[i] = fileObject(f)
	}
	return writeJSON(w, listOf(objs, more, func(f FileObject) string { return f.ID }))
}
