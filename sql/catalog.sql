-- The catalog schema: one DuckDB file per output folder. JSON columns hold JSON text.

-- name: settings
-- No network, ever: extensions are neither installed nor loaded behind the user's back.
SET autoinstall_known_extensions = false;
SET autoload_known_extensions = false;
SET preserve_insertion_order = true;
-- DuckDB caches table data up to its memory limit (80% of RAM by default), so memory would
-- grow with the corpus; past this limit it spills to a temporary folder beside the catalog.
-- 256 MB holds a million notes' staged metadata (about 90 MB) and what the set rules'
-- query needs beside it; 1 GB cost 120 MB more at that size for no speed, 128 MB spilled
-- and was 10-15% slower.
SET memory_limit = '256MB';

-- name: schema
CREATE TABLE IF NOT EXISTS build_runs (
    build_id        VARCHAR PRIMARY KEY,
    started_at      TIMESTAMP NOT NULL,
    finished_at     TIMESTAMP,
    ehrprep_version VARCHAR NOT NULL,
    config          VARCHAR NOT NULL, -- JSON: the recipe and options
    inputs          VARCHAR NOT NULL, -- JSON: the files found, with sizes
    status          VARCHAR NOT NULL, -- running | succeeded
    stats           VARCHAR           -- JSON: notes and characters per reason, seconds
);

-- One row per input note: kept, or the single reason it was dropped.
CREATE TABLE IF NOT EXISTS note_decisions (
    build_id   VARCHAR NOT NULL,
    source     VARCHAR NOT NULL, -- mimic-iii | mimic-iv
    note_id    VARCHAR NOT NULL, -- ROW_ID as text (MIMIC-III), note_id (MIMIC-IV)
    subject_id BIGINT NOT NULL,
    hadm_id    BIGINT,
    category   VARCHAR NOT NULL,
    reason     VARCHAR NOT NULL
);

-- Notes dropped as `task_text_overlap`: each downstream task document the note holds, with
-- the estimated share of the document's own 5-word shingles (those no other task document
-- has) found in the note, from a sample of 256.
CREATE TABLE IF NOT EXISTS task_overlap (
    build_id    VARCHAR NOT NULL,
    source      VARCHAR NOT NULL, -- the note's release
    note_id     VARCHAR NOT NULL,
    task        VARCHAR NOT NULL, -- radqa | clip
    task_doc_id VARCHAR NOT NULL, -- the document's NOTEEVENTS ROW_ID (RadQA title, CLIP doc_id)
    containment DOUBLE NOT NULL
);

-- The downstream task documents the build was given (`--task-data`), and whether the
-- task-text guard looks for them: a document needs 8 shingles that no other task document
-- has (boilerplate shared between documents does not count).
CREATE TABLE IF NOT EXISTS task_documents (
    build_id     VARCHAR NOT NULL,
    task         VARCHAR NOT NULL, -- radqa | clip
    doc_id       VARCHAR NOT NULL, -- NOTEEVENTS ROW_ID
    own_shingles BIGINT NOT NULL,
    guarded      BOOLEAN NOT NULL
);

-- The normalized kept notes, in build order (`seq`); later stages read from here.
CREATE TABLE IF NOT EXISTS corpus (
    seq        BIGINT NOT NULL,
    note_id    VARCHAR NOT NULL,
    source     VARCHAR NOT NULL,
    subject_id BIGINT NOT NULL,
    hadm_id    BIGINT,
    category   VARCHAR NOT NULL,
    text       VARCHAR NOT NULL USING COMPRESSION zstd
);

-- name: stage
-- Working tables of a build: temporary (this connection only, in memory up to the memory
-- limit, spilled to the temp directory beyond it), never compressed into the catalog file.
-- stage_notes' rowid is a note's place in the build (`ord`): files are inserted in order,
-- each in file order, and nothing is ever deleted. It holds no text (normalization reads
-- each file again). Its values are checked after each file (`bad` names a record's first
-- field that failed to cast), not by constraints, so that an error names the record and
-- field.
CREATE TEMP TABLE stage_notes (
    source     VARCHAR NOT NULL,
    note_id    VARCHAR,
    row_id     BIGINT,
    subject_id BIGINT,
    hadm_id    BIGINT,
    category   VARCHAR,
    charttime  TIMESTAMP,
    storetime  TIMESTAMP,
    cgid       BIGINT,
    iserror    BOOLEAN NOT NULL,
    bad        VARCHAR
);
CREATE TEMP TABLE stage_icustays (subject_id BIGINT NOT NULL, dbsource VARCHAR);
CREATE TEMP TABLE stage_task_rows (row_id BIGINT NOT NULL, file VARCHAR NOT NULL);
-- source: NULL for an id that applies to both releases.
CREATE TEMP TABLE stage_excluded (source VARCHAR, subject_id BIGINT NOT NULL);

-- name: drop_stage
DROP TABLE IF EXISTS stage_notes;
DROP TABLE IF EXISTS stage_icustays;
DROP TABLE IF EXISTS stage_task_rows;
DROP TABLE IF EXISTS stage_excluded;
DROP TABLE IF EXISTS stage_reasons;
DROP TABLE IF EXISTS stage_late;
DROP TABLE IF EXISTS stage_overlaps;
DROP TABLE IF EXISTS raw_file;

-- name: insert_build_run
INSERT INTO build_runs (build_id, started_at, ehrprep_version, config, inputs, status)
VALUES (?, now()::TIMESTAMP, ?, ?, ?, 'running');

-- name: finish_build_run
UPDATE build_runs SET finished_at = now()::TIMESTAMP, status = 'succeeded', stats = ?
WHERE build_id = ?;
