-- Reading downstream task files.

-- name: clip_sentences
-- CLIP sentence_level.csv: each record's doc_id (a NOTEEVENTS ROW_ID, checked in Rust) and
-- sentence (a Python list of tokens, parsed in Rust) with its record number, each document's
-- sentences in `sent_index` order. A sent_index that is not an integer fails the query.
SELECT doc_id, sentence, record FROM (
    SELECT doc_id, sentence, CAST(sent_index AS BIGINT) AS sent_index,
           row_number() OVER () AS record
    FROM read_csv(?, header = true, delim = ',', quote = '"', escape = '"',
        all_varchar = true, strict_mode = true)
)
ORDER BY doc_id, sent_index, record;
