-- The tutorial's model: a title of at most 200 characters and when it was created. The CHECK
-- repeats the API's validation so that no other writer can store what the API would reject.
CREATE TABLE samples (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title      text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

---- create above / drop below ----

DROP TABLE samples;
