-- Tokenizer sample, packing order and the tables describing tokenizers and shards.

-- name: schema
CREATE TABLE IF NOT EXISTS tokenizers (
    build_id   VARCHAR NOT NULL,
    sha256     VARCHAR NOT NULL, -- of tokenizer.json
    origin     VARCHAR NOT NULL, -- trained | the --tokenizer path
    vocab_size BIGINT NOT NULL,  -- with sentinels and tags
    eos_id     BIGINT NOT NULL,
    sentinel0  BIGINT NOT NULL,  -- id of <extra_id_0>
    config     VARCHAR NOT NULL  -- JSON
);
CREATE TABLE IF NOT EXISTS shards (
    build_id VARCHAR NOT NULL,
    split    VARCHAR NOT NULL, -- train | validation
    file     VARCHAR NOT NULL, -- relative to OUT/shards
    rows     BIGINT NOT NULL,
    tokens   BIGINT NOT NULL,
    sha256   VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS splits (
    build_id       VARCHAR NOT NULL,
    split          VARCHAR NOT NULL,
    notes          BIGINT NOT NULL,
    subjects       BIGINT NOT NULL,
    tokens         BIGINT NOT NULL, -- in whole rows
    dropped_tokens BIGINT NOT NULL  -- the last, incomplete row
);
-- Which split each corpus note went to, and its position in that split's note order.
CREATE OR REPLACE TABLE pack_order (seq BIGINT NOT NULL, split VARCHAR NOT NULL, pos BIGINT NOT NULL);

-- name: corpus_size
SELECT count(*), coalesce(sum(length(text)), 0) FROM corpus;

-- name: sample
-- Every n-th note in build order, for tokenizer training.
SELECT text FROM corpus WHERE seq % ? = 0 ORDER BY seq;

-- name: notes_for_split
SELECT seq, subject_id FROM corpus ORDER BY seq;

-- name: batch_in_order
SELECT c.text FROM pack_order o JOIN corpus c USING (seq)
WHERE o.split = ? AND o.pos >= ? AND o.pos < ?
ORDER BY o.pos;

-- name: insert_tokenizer
INSERT INTO tokenizers VALUES (?, ?, ?, ?, ?, ?, ?);

-- name: insert_split
INSERT INTO splits VALUES (?, ?, ?, ?, ?, ?);

-- name: insert_shard
INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?);

-- name: all_texts
SELECT text FROM corpus ORDER BY seq;
