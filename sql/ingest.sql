-- Loading MIMIC CSV(.gz) files. Everything is read as text first, so that a bad value is
-- reported by record and field (see the validate_* statements) instead of as a DuckDB cast
-- error quoting the whole record. Headers are checked in Rust before these run, and the
-- `columns` lists below name the columns in the order the header was checked to have.

-- name: read_mimic3
CREATE OR REPLACE TEMP TABLE raw_file AS
SELECT * FROM read_csv(?,
    header = true, delim = ',', quote = '"', escape = '"', new_line = '\n',
    all_varchar = true, strict_mode = true, max_line_size = 16777216,
    columns = {
        'ROW_ID': 'VARCHAR', 'SUBJECT_ID': 'VARCHAR', 'HADM_ID': 'VARCHAR',
        'CHARTDATE': 'VARCHAR', 'CHARTTIME': 'VARCHAR', 'STORETIME': 'VARCHAR',
        'CATEGORY': 'VARCHAR', 'DESCRIPTION': 'VARCHAR', 'CGID': 'VARCHAR',
        'ISERROR': 'VARCHAR', 'TEXT': 'VARCHAR'
    });

-- name: validate_mimic3
-- The first record with a bad field, in file order (rowid follows the file).
SELECT rowid + 1 AS record, field FROM (
    SELECT rowid, CASE
        WHEN TRY_CAST(ROW_ID AS BIGINT) IS NULL THEN 'ROW_ID'
        WHEN TRY_CAST(SUBJECT_ID AS BIGINT) IS NULL THEN 'SUBJECT_ID'
        WHEN HADM_ID IS NOT NULL AND TRY_CAST(HADM_ID AS BIGINT) IS NULL THEN 'HADM_ID'
        WHEN CHARTDATE IS NOT NULL AND TRY_CAST(CHARTDATE AS DATE) IS NULL THEN 'CHARTDATE'
        WHEN CHARTTIME IS NOT NULL AND TRY_CAST(CHARTTIME AS TIMESTAMP) IS NULL THEN 'CHARTTIME'
        WHEN STORETIME IS NOT NULL AND TRY_CAST(STORETIME AS TIMESTAMP) IS NULL THEN 'STORETIME'
        WHEN CATEGORY IS NULL OR trim(CATEGORY) = '' THEN 'CATEGORY'
        WHEN CGID IS NOT NULL AND TRY_CAST(CGID AS BIGINT) IS NULL THEN 'CGID'
        WHEN ISERROR IS NOT NULL AND trim(ISERROR) NOT IN ('', '0', '1') THEN 'ISERROR'
    END AS field
    FROM raw_file
) WHERE field IS NOT NULL ORDER BY rowid LIMIT 1;

-- name: duplicate_mimic3
-- The first record whose ROW_ID repeats an earlier one. A hash aggregate finds the repeated
-- ids; the window runs over their few rows only.
SELECT min(rowid) + 1 FROM (
    SELECT rowid, row_number() OVER (PARTITION BY CAST(ROW_ID AS BIGINT) ORDER BY rowid) AS n
    FROM raw_file
    WHERE CAST(ROW_ID AS BIGINT) IN (
        SELECT CAST(ROW_ID AS BIGINT) FROM raw_file GROUP BY 1 HAVING count(*) > 1
    )
) WHERE n > 1;

-- name: insert_mimic3
INSERT INTO stage_notes
SELECT ? + rowid, 'mimic-iii', CAST(CAST(ROW_ID AS BIGINT) AS VARCHAR), CAST(ROW_ID AS BIGINT),
       CAST(SUBJECT_ID AS BIGINT), CAST(HADM_ID AS BIGINT), trim(CATEGORY),
       CAST(CHARTTIME AS TIMESTAMP), CAST(STORETIME AS TIMESTAMP), CAST(CGID AS BIGINT),
       coalesce(trim(ISERROR) = '1', false), coalesce(TEXT, '')
FROM raw_file ORDER BY rowid;

-- name: read_mimic4
CREATE OR REPLACE TEMP TABLE raw_file AS
SELECT * FROM read_csv(?,
    header = true, delim = ',', quote = '"', escape = '"', new_line = '\n',
    all_varchar = true, strict_mode = true, max_line_size = 16777216,
    columns = {
        'note_id': 'VARCHAR', 'subject_id': 'VARCHAR', 'hadm_id': 'VARCHAR',
        'note_type': 'VARCHAR', 'note_seq': 'VARCHAR', 'charttime': 'VARCHAR',
        'storetime': 'VARCHAR', 'text': 'VARCHAR'
    });

-- name: validate_mimic4
SELECT rowid + 1 AS record, field FROM (
    SELECT rowid, CASE
        WHEN note_id IS NULL OR trim(note_id) = '' THEN 'note_id'
        WHEN TRY_CAST(subject_id AS BIGINT) IS NULL THEN 'subject_id'
        WHEN hadm_id IS NOT NULL AND TRY_CAST(hadm_id AS BIGINT) IS NULL THEN 'hadm_id'
        WHEN note_type IS NULL OR trim(note_type) = '' THEN 'note_type'
        WHEN note_seq IS NOT NULL AND TRY_CAST(note_seq AS BIGINT) IS NULL THEN 'note_seq'
        WHEN charttime IS NOT NULL AND TRY_CAST(charttime AS TIMESTAMP) IS NULL THEN 'charttime'
        WHEN storetime IS NOT NULL AND TRY_CAST(storetime AS TIMESTAMP) IS NULL THEN 'storetime'
    END AS field
    FROM raw_file
) WHERE field IS NOT NULL ORDER BY rowid LIMIT 1;

-- name: duplicate_mimic4
-- The first record whose note_id repeats one in this file or one already staged.
SELECT min(rowid) + 1 FROM (
    SELECT rowid, row_number() OVER (PARTITION BY trim(note_id) ORDER BY rowid) AS n,
           trim(note_id) IN (SELECT note_id FROM stage_notes WHERE source = 'mimic-iv') AS staged
    FROM raw_file
    WHERE trim(note_id) IN (
        SELECT trim(note_id) FROM raw_file GROUP BY 1 HAVING count(*) > 1
        UNION ALL
        SELECT note_id FROM stage_notes WHERE source = 'mimic-iv'
    )
) WHERE n > 1 OR staged;

-- name: insert_mimic4
-- The category comes from the file (discharge or radiology), as the recipe reports it.
INSERT INTO stage_notes
SELECT ? + rowid, 'mimic-iv', trim(note_id), NULL, CAST(subject_id AS BIGINT),
       CAST(hadm_id AS BIGINT), ?, CAST(charttime AS TIMESTAMP), CAST(storetime AS TIMESTAMP),
       NULL, false, coalesce(text, '')
FROM raw_file ORDER BY rowid;

-- name: count_raw
SELECT count(*) FROM raw_file;

-- name: next_ord
SELECT coalesce(max(ord) + 1, 0) FROM stage_notes;

-- name: read_icustays
CREATE OR REPLACE TEMP TABLE raw_file AS
SELECT * FROM read_csv(?, header = true, delim = ',', quote = '"', escape = '"',
    all_varchar = true, strict_mode = true);

-- name: validate_icustays
SELECT min(rowid) + 1 FROM raw_file WHERE TRY_CAST(SUBJECT_ID AS BIGINT) IS NULL;

-- name: insert_icustays
INSERT INTO stage_icustays
SELECT CAST(SUBJECT_ID AS BIGINT), lower(trim(DBSOURCE)) FROM raw_file;
