-- The coursedb stands in for the centre's own course database; in production COURSEDB_URL points
-- at that server instead and this database stays empty.
CREATE DATABASE coursedb OWNER edumesh;
