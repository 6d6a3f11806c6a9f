-- Reading downstream task files.

-- name: clip_doc_ids
-- CLIP sentence_level.csv: every distinct doc_id (a NOTEEVENTS ROW_ID), checked in Rust.
SELECT DISTINCT doc_id FROM read_csv(?, header = true, delim = ',', quote = '"', escape = '"',
    all_varchar = true, strict_mode = true)
ORDER BY doc_id;
