-- Loading MIMIC CSV files straight into stage_notes (metadata only), in file order, so a
-- note's rowid there is its place in the build (`ord`); the text is read again, in the same
-- dialect, when it is normalized (src/reread.rs). Fields are read as text and cast with
-- TRY_CAST, so a bad value is reported by record and field (validate_notes) instead of as
-- a DuckDB cast error quoting the whole record.

-- name: readers
-- How each kind of note file is read. Temporary macros: each connection that reads notes
-- creates them. Headers are checked in Rust before these run, and the `columns` lists
-- name the columns in the order the header was checked to have.
-- buffer_size: DuckDB's default is 16 x max_line_size (256 MiB here), one buffer for any
-- real file and so one parsing thread; 16 MiB buffers are parsed in parallel.
-- auto_detect = false: the dialect and columns are all given, and sniffing them anyway
-- cost a fifth of the read's time.
CREATE OR REPLACE TEMP MACRO mimic3_csv(path) AS TABLE
SELECT * FROM read_csv(path,
    header = true, delim = ',', quote = '"', escape = '"', new_line = '\n',
    all_varchar = true, strict_mode = true, max_line_size = 16777216, buffer_size = 16777216,
    auto_detect = false,
    columns = {
        'ROW_ID': 'VARCHAR', 'SUBJECT_ID': 'VARCHAR', 'HADM_ID': 'VARCHAR',
        'CHARTDATE': 'VARCHAR', 'CHARTTIME': 'VARCHAR', 'STORETIME': 'VARCHAR',
        'CATEGORY': 'VARCHAR', 'DESCRIPTION': 'VARCHAR', 'CGID': 'VARCHAR',
        'ISERROR': 'VARCHAR', 'TEXT': 'VARCHAR'
    });
CREATE OR REPLACE TEMP MACRO mimic4_csv(path) AS TABLE
SELECT * FROM read_csv(path,
    header = true, delim = ',', quote = '"', escape = '"', new_line = '\n',
    all_varchar = true, strict_mode = true, max_line_size = 16777216, buffer_size = 16777216,
    auto_detect = false,
    columns = {
        'note_id': 'VARCHAR', 'subject_id': 'VARCHAR', 'hadm_id': 'VARCHAR',
        'note_type': 'VARCHAR', 'note_seq': 'VARCHAR', 'charttime': 'VARCHAR',
        'storetime': 'VARCHAR', 'text': 'VARCHAR'
    });

-- name: insert_mimic3
-- Values that do not cast become NULL and `bad` names the record's first such field;
-- validate_notes reports it before anything else reads them.
INSERT INTO stage_notes
SELECT 'mimic-iii', CAST(TRY_CAST(ROW_ID AS BIGINT) AS VARCHAR), TRY_CAST(ROW_ID AS BIGINT),
       TRY_CAST(SUBJECT_ID AS BIGINT), TRY_CAST(HADM_ID AS BIGINT), trim(CATEGORY),
       TRY_CAST(CHARTTIME AS TIMESTAMP), TRY_CAST(STORETIME AS TIMESTAMP),
       TRY_CAST(CGID AS BIGINT), coalesce(trim(ISERROR) = '1', false),
       CASE
           WHEN TRY_CAST(ROW_ID AS BIGINT) IS NULL THEN 'ROW_ID'
           WHEN TRY_CAST(SUBJECT_ID AS BIGINT) IS NULL THEN 'SUBJECT_ID'
           WHEN HADM_ID IS NOT NULL AND TRY_CAST(HADM_ID AS BIGINT) IS NULL THEN 'HADM_ID'
           WHEN CHARTDATE IS NOT NULL AND TRY_CAST(CHARTDATE AS DATE) IS NULL THEN 'CHARTDATE'
           WHEN CHARTTIME IS NOT NULL AND TRY_CAST(CHARTTIME AS TIMESTAMP) IS NULL THEN 'CHARTTIME'
           WHEN STORETIME IS NOT NULL AND TRY_CAST(STORETIME AS TIMESTAMP) IS NULL THEN 'STORETIME'
           WHEN CATEGORY IS NULL OR trim(CATEGORY) = '' THEN 'CATEGORY'
           WHEN CGID IS NOT NULL AND TRY_CAST(CGID AS BIGINT) IS NULL THEN 'CGID'
           WHEN ISERROR IS NOT NULL AND trim(ISERROR) NOT IN ('', '0', '1') THEN 'ISERROR'
       END
FROM mimic3_csv(?);

-- name: insert_mimic4
-- Parameter 1: the category, from the file (discharge or radiology), as the recipe reports it.
INSERT INTO stage_notes
SELECT 'mimic-iv', trim(note_id), NULL, TRY_CAST(subject_id AS BIGINT),
       TRY_CAST(hadm_id AS BIGINT), ?, TRY_CAST(charttime AS TIMESTAMP),
       TRY_CAST(storetime AS TIMESTAMP), NULL, false,
       CASE
           WHEN note_id IS NULL OR trim(note_id) = '' THEN 'note_id'
           WHEN TRY_CAST(subject_id AS BIGINT) IS NULL THEN 'subject_id'
           WHEN hadm_id IS NOT NULL AND TRY_CAST(hadm_id AS BIGINT) IS NULL THEN 'hadm_id'
           WHEN note_type IS NULL OR trim(note_type) = '' THEN 'note_type'
           WHEN note_seq IS NOT NULL AND TRY_CAST(note_seq AS BIGINT) IS NULL THEN 'note_seq'
           WHEN charttime IS NOT NULL AND TRY_CAST(charttime AS TIMESTAMP) IS NULL THEN 'charttime'
           WHEN storetime IS NOT NULL AND TRY_CAST(storetime AS TIMESTAMP) IS NULL THEN 'storetime'
       END
FROM mimic4_csv(?);

-- name: staged_count
-- Notes staged so far: a file's notes take the rowids from here on, in file order.
SELECT count(*) FROM stage_notes;

-- name: validate_notes
-- The first record of the file starting at rowid ? with a bad field, in file order.
SELECT rowid - $1 + 1 AS record, bad FROM stage_notes
WHERE rowid >= $1 AND bad IS NOT NULL
ORDER BY rowid LIMIT 1;

-- name: duplicate_mimic3
-- The first record whose ROW_ID repeats an earlier one. A hash aggregate finds the repeated
-- ids; the window runs over their few rows only.
SELECT min(rowid) - $1 + 1 FROM (
    SELECT rowid, row_number() OVER (PARTITION BY row_id ORDER BY rowid) AS n
    FROM stage_notes
    WHERE rowid >= $1 AND row_id IN (
        SELECT row_id FROM stage_notes WHERE rowid >= $1 GROUP BY 1 HAVING count(*) > 1
    )
) WHERE n > 1;

-- name: duplicate_mimic4
-- The first record whose note_id repeats one in this file or one staged from an earlier one.
SELECT min(rowid) - $1 + 1 FROM (
    SELECT rowid, row_number() OVER (PARTITION BY note_id ORDER BY rowid) AS n
    FROM stage_notes
    WHERE source = 'mimic-iv' AND note_id IN (
        SELECT note_id FROM stage_notes WHERE source = 'mimic-iv' GROUP BY 1 HAVING count(*) > 1
    )
) WHERE n > 1 AND rowid >= $1;

-- name: read_icustays
CREATE OR REPLACE TEMP TABLE raw_file AS
SELECT * FROM read_csv(?, header = true, delim = ',', quote = '"', escape = '"',
    all_varchar = true, strict_mode = true);

-- name: validate_icustays
SELECT min(rowid) + 1 FROM raw_file WHERE TRY_CAST(SUBJECT_ID AS BIGINT) IS NULL;

-- name: insert_icustays
INSERT INTO stage_icustays
SELECT CAST(SUBJECT_ID AS BIGINT), lower(trim(DBSOURCE)) FROM raw_file;
