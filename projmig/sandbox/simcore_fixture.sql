-- projmig's own fixture of the osparc-simcore schema: the tables a project touches, with the
-- same columns, keys, foreign keys and triggers as the real schema at alembic head 3f8c0e8d11a4
-- (see shared/simcore-schema). Deployment-bound link tables (folders, wallets, tags, workspaces)
-- are here so that tests can prove they are not copied.

CREATE TYPE projecttype AS ENUM ('TEMPLATE', 'STANDARD');
CREATE TYPE projecttemplatetype AS ENUM ('TEMPLATE', 'TUTORIAL', 'HYPERTOOL');
CREATE TYPE grouptype AS ENUM ('STANDARD', 'PRIMARY', 'EVERYONE');
CREATE TYPE userstatus AS ENUM ('CONFIRMATION_PENDING', 'ACTIVE', 'BANNED', 'EXPIRED', 'DELETED');
CREATE TYPE userrole AS ENUM ('ANONYMOUS', 'GUEST', 'USER', 'TESTER', 'ADMIN', 'PRODUCT_OWNER');
CREATE TYPE walletstatus AS ENUM ('ACTIVE', 'INACTIVE');

CREATE FUNCTION check_group_uniqueness(name text, type text) RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF type = 'EVERYONE' AND (SELECT COUNT(*) FROM groups WHERE groups.type = 'EVERYONE') = 1 THEN
        RETURN 127;
    END IF;
    RETURN 0;
END; $$;

CREATE TABLE alembic_version (
    version_num varchar(32) NOT NULL CONSTRAINT alembic_version_pkc PRIMARY KEY
);

CREATE TABLE groups (
    gid bigserial CONSTRAINT groups_pkey PRIMARY KEY,
    name varchar NOT NULL,
    description varchar NOT NULL,
    type grouptype DEFAULT 'STANDARD' NOT NULL,
    created timestamp DEFAULT now() NOT NULL,
    modified timestamp DEFAULT now() NOT NULL,
    thumbnail varchar,
    inclusion_rules jsonb DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT groups_check CHECK (check_group_uniqueness(name::text, type::text) = 0)
);

CREATE TABLE users (
    id bigserial CONSTRAINT user_pkey PRIMARY KEY,
    name varchar NOT NULL CONSTRAINT user_name_ukey UNIQUE,
    email varchar NOT NULL CONSTRAINT user_login_key UNIQUE,
    status userstatus NOT NULL,
    role userrole NOT NULL,
    created_at timestamp DEFAULT now() NOT NULL,
    modified timestamp DEFAULT now() NOT NULL,
    primary_gid bigint CONSTRAINT fk_users_gid_groups REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE RESTRICT,
    phone varchar,
    expires_at timestamp,
    first_name varchar,
    last_name varchar,
    privacy_hide_fullname boolean DEFAULT true NOT NULL,
    privacy_hide_email boolean DEFAULT true NOT NULL,
    privacy_hide_username boolean DEFAULT false NOT NULL,
    language varchar
);

CREATE TABLE user_to_groups (
    uid bigint CONSTRAINT fk_user_to_groups_id_users REFERENCES users(id) ON UPDATE CASCADE ON DELETE CASCADE,
    gid bigint CONSTRAINT fk_user_to_groups_gid_groups REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE CASCADE,
    created timestamp DEFAULT now() NOT NULL,
    modified timestamp DEFAULT now() NOT NULL,
    access_rights jsonb DEFAULT '{"read": true, "write": false, "delete": false}'::jsonb NOT NULL,
    CONSTRAINT user_to_groups_uid_gid_key UNIQUE (uid, gid)
);

CREATE FUNCTION set_user_groups() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    group_id BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO "groups" ("name", "description", "type") VALUES (NEW.name, 'primary group', 'PRIMARY') RETURNING gid INTO group_id;
        INSERT INTO "user_to_groups" ("uid", "gid") VALUES (NEW.id, group_id);
        UPDATE "users" SET "primary_gid" = group_id WHERE "id" = NEW.id;
        INSERT INTO "user_to_groups" ("uid", "gid") VALUES (NEW.id, (SELECT "gid" FROM "groups" WHERE "type" = 'EVERYONE'));
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE "groups" SET "name" = NEW.name WHERE "gid" = NEW.primary_gid;
    ELSEIF TG_OP = 'DELETE' THEN
        DELETE FROM "groups" WHERE "gid" = OLD.primary_gid;
    END IF;
    RETURN NULL;
END; $$;
CREATE TRIGGER user_modification AFTER INSERT OR DELETE OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_user_groups();

CREATE TABLE products (
    name varchar NOT NULL CONSTRAINT products_pk PRIMARY KEY,
    created timestamp DEFAULT now() NOT NULL,
    modified timestamp DEFAULT now() NOT NULL,
    host_regex varchar NOT NULL,
    display_name varchar DEFAULT 'o²S²PARC' NOT NULL,
    support_email varchar DEFAULT 'support@osparc.io' NOT NULL,
    twilio_messaging_sid varchar,
    short_name varchar DEFAULT 'osparc' NOT NULL,
    vendor jsonb,
    issues jsonb,
    manuals jsonb,
    support jsonb,
    priority integer DEFAULT 0,
    max_open_studies_per_user integer,
    group_id bigint CONSTRAINT products_group_id_unique_constraint UNIQUE
        CONSTRAINT fk_products_group_id REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE SET NULL,
    login_settings jsonb DEFAULT '{}'::jsonb NOT NULL,
    product_owners_email varchar,
    ui jsonb DEFAULT '{}'::jsonb NOT NULL,
    support_standard_group_id bigint CONSTRAINT fk_products_support_standard_group_id REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE SET NULL,
    support_assigned_fogbugz_person_id bigint,
    support_assigned_fogbugz_project_id bigint,
    support_chatbot_user_id bigint CONSTRAINT fk_products_support_chatbot_user_id REFERENCES users(id) ON UPDATE CASCADE ON DELETE SET NULL,
    base_url varchar NOT NULL,
    studies_dispatcher_enabled boolean DEFAULT false NOT NULL
);

CREATE TABLE workspaces (
    workspace_id bigserial CONSTRAINT workspaces_pkey PRIMARY KEY,
    name varchar NOT NULL,
    description varchar,
    thumbnail varchar,
    owner_primary_gid bigint NOT NULL CONSTRAINT fk_workspaces_gid_groups REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE RESTRICT,
    product_name varchar NOT NULL CONSTRAINT fk_workspaces_product_name REFERENCES products(name) ON UPDATE CASCADE ON DELETE CASCADE,
    created timestamptz DEFAULT now() NOT NULL,
    modified timestamptz DEFAULT now() NOT NULL,
    trashed timestamptz,
    trashed_by bigint CONSTRAINT fk_workspace_trashed_by_user_id REFERENCES users(id) ON UPDATE CASCADE ON DELETE SET NULL
);

CREATE TABLE projects (
    id bigserial CONSTRAINT projects_pkey PRIMARY KEY,
    type projecttype NOT NULL,
    uuid varchar NOT NULL CONSTRAINT projects_uuid_key UNIQUE,
    name varchar NOT NULL,
    description varchar,
    thumbnail varchar,
    prj_owner bigint CONSTRAINT fk_projects_prj_owner_users REFERENCES users(id) ON UPDATE CASCADE ON DELETE RESTRICT,
    creation_date timestamp DEFAULT now() NOT NULL,
    last_change_date timestamp DEFAULT now() NOT NULL,
    published boolean NOT NULL,
    dev jsonb DEFAULT '{}'::jsonb NOT NULL,
    classifiers varchar[] DEFAULT '{}'::varchar[] NOT NULL,
    ui jsonb DEFAULT '{}'::jsonb NOT NULL,
    quality jsonb DEFAULT '{}'::jsonb NOT NULL,
    hidden boolean NOT NULL,
    workspace_id bigint CONSTRAINT fk_projects_to_workspaces_id REFERENCES workspaces(workspace_id) ON UPDATE CASCADE ON DELETE CASCADE,
    trashed timestamptz,
    trashed_explicitly boolean DEFAULT false NOT NULL,
    trashed_by bigint CONSTRAINT fk_projects_trashed_by_user_id REFERENCES users(id) ON UPDATE CASCADE ON DELETE SET NULL,
    template_type projecttemplatetype,
    product_name varchar NOT NULL CONSTRAINT fk_projects_to_product_name REFERENCES products(name) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX ix_projects_prj_owner ON projects (prj_owner);

CREATE TABLE project_to_groups (
    project_uuid varchar NOT NULL CONSTRAINT fk_project_to_groups_project_uuid REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    gid bigint NOT NULL CONSTRAINT fk_project_to_groups_gid_groups REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE CASCADE,
    read boolean DEFAULT false NOT NULL,
    write boolean DEFAULT false NOT NULL,
    delete boolean DEFAULT false NOT NULL,
    created timestamptz DEFAULT now() NOT NULL,
    modified timestamptz DEFAULT now() NOT NULL,
    CONSTRAINT project_to_groups_project_uuid_gid_key UNIQUE (project_uuid, gid)
);

CREATE FUNCTION set_project_to_owner_group() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    group_id BIGINT;
BEGIN
    SELECT u.primary_gid INTO group_id FROM users u WHERE u.id = NEW.prj_owner LIMIT 1;
    IF group_id IS NOT NULL THEN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO "project_to_groups" ("gid", "project_uuid", "read", "write", "delete") VALUES (group_id, NEW.uuid, TRUE, TRUE, TRUE);
        END IF;
    END IF;
    RETURN NULL;
END; $$;
CREATE TRIGGER project_creation AFTER INSERT ON projects
    FOR EACH ROW EXECUTE FUNCTION set_project_to_owner_group();

CREATE TABLE projects_nodes (
    node_id varchar NOT NULL,
    required_resources jsonb DEFAULT '{}'::jsonb NOT NULL,
    created timestamptz DEFAULT now() NOT NULL,
    modified timestamptz DEFAULT now() NOT NULL,
    project_uuid varchar NOT NULL CONSTRAINT fk_projects_to_projects_nodes_to_projects_uuid REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    project_node_id serial CONSTRAINT projects_nodes_pkey PRIMARY KEY,
    key varchar NOT NULL,
    version varchar NOT NULL,
    label varchar NOT NULL,
    progress numeric,
    input_access jsonb,
    input_nodes jsonb,
    inputs jsonb,
    inputs_required jsonb,
    inputs_units jsonb,
    outputs jsonb,
    run_hash varchar,
    state jsonb,
    boot_options jsonb,
    ui jsonb DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT projects_nodes__node_project UNIQUE (node_id, project_uuid)
);

CREATE FUNCTION update_projects_last_change_date() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    project_uuid VARCHAR;
BEGIN
    IF TG_OP = 'DELETE' THEN
        project_uuid := OLD.project_uuid;
    ELSE
        project_uuid := NEW.project_uuid;
    END IF;
    UPDATE projects SET last_change_date = NOW() WHERE uuid = project_uuid;
    RETURN NULL;
END; $$;
CREATE TRIGGER projects_nodes_changed AFTER INSERT OR DELETE OR UPDATE ON projects_nodes
    FOR EACH ROW EXECUTE FUNCTION update_projects_last_change_date();

CREATE FUNCTION projects_nodes_auto_update_modified() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.modified := current_timestamp;
  RETURN NEW;
END; $$;
CREATE TRIGGER trigger_auto_update BEFORE INSERT OR UPDATE ON projects_nodes
    FOR EACH ROW EXECUTE FUNCTION projects_nodes_auto_update_modified();

CREATE TABLE projects_metadata (
    project_uuid varchar NOT NULL CONSTRAINT projects_metadata_pkey PRIMARY KEY
        CONSTRAINT fk_projects_metadata_project_uuid REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    custom jsonb DEFAULT '{}'::jsonb NOT NULL,
    created timestamptz DEFAULT now() NOT NULL,
    modified timestamptz DEFAULT now() NOT NULL,
    parent_project_uuid varchar,
    parent_node_id varchar,
    root_parent_project_uuid varchar,
    root_parent_node_id varchar,
    CONSTRAINT fk_projects_metadata_parent_node_id FOREIGN KEY (parent_project_uuid, parent_node_id)
        REFERENCES projects_nodes(project_uuid, node_id) ON UPDATE CASCADE ON DELETE SET NULL,
    CONSTRAINT fk_projects_metadata_root_parent_node_id FOREIGN KEY (root_parent_project_uuid, root_parent_node_id)
        REFERENCES projects_nodes(project_uuid, node_id) ON UPDATE CASCADE ON DELETE SET NULL
);
CREATE INDEX idx_projects_metadata_root_parent_project_uuid ON projects_metadata (root_parent_project_uuid);

CREATE FUNCTION projects_metadata_auto_update_modified() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.modified := current_timestamp;
  RETURN NEW;
END; $$;
CREATE TRIGGER trigger_auto_update BEFORE INSERT OR UPDATE ON projects_metadata
    FOR EACH ROW EXECUTE FUNCTION projects_metadata_auto_update_modified();

CREATE TABLE projects_to_jobs (
    project_uuid varchar NOT NULL CONSTRAINT fk_projects_to_jobs_project_uuid REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    job_parent_resource_name varchar NOT NULL,
    storage_assets_deleted boolean NOT NULL,
    CONSTRAINT uq_projects_to_jobs_project_uuid_job_parent_resource_name UNIQUE (project_uuid, job_parent_resource_name)
);

CREATE TABLE projects_extensions (
    project_uuid varchar NOT NULL CONSTRAINT projects_extensions_pkey PRIMARY KEY
        CONSTRAINT fk_projects_extensions_project_uuid_projects REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    allow_guests_to_push_states_and_output_ports boolean DEFAULT false NOT NULL
);

CREATE TABLE projects_networks (
    project_uuid varchar NOT NULL CONSTRAINT projects_networks_pkey PRIMARY KEY
        CONSTRAINT fk_projects_networks_project_uuid_projects REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    networks_with_aliases jsonb DEFAULT '{}'::jsonb NOT NULL
);

CREATE TABLE file_meta_data (
    location_id varchar,
    location varchar,
    bucket_name varchar,
    object_name varchar,
    project_id varchar CONSTRAINT fk_file_meta_data_project_id_projects REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    node_id varchar,
    user_id bigint NOT NULL CONSTRAINT fk_file_meta_data_user_id_users REFERENCES users(id) ON UPDATE CASCADE ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    file_id varchar NOT NULL CONSTRAINT pk_file_meta_data PRIMARY KEY,
    file_size bigint,
    last_modified timestamptz NOT NULL,
    entity_tag varchar,
    is_soft_link boolean DEFAULT false NOT NULL,
    upload_expires_at timestamp,
    upload_id varchar,
    is_directory boolean DEFAULT false NOT NULL,
    sha256_checksum varchar
);
CREATE INDEX ix_file_meta_data_project_id ON file_meta_data (project_id);

CREATE TABLE folders_v2 (
    folder_id bigserial CONSTRAINT folders_v2_pkey PRIMARY KEY,
    name varchar NOT NULL,
    parent_folder_id bigint CONSTRAINT fk_new_folders_to_folders_id REFERENCES folders_v2(folder_id) ON UPDATE CASCADE,
    product_name varchar NOT NULL CONSTRAINT fk_new_folders_to_products_name REFERENCES products(name) ON UPDATE CASCADE ON DELETE CASCADE,
    user_id bigint CONSTRAINT fk_folders_to_user_id REFERENCES users(id) ON UPDATE CASCADE ON DELETE CASCADE,
    workspace_id bigint CONSTRAINT fk_folders_to_workspace_id REFERENCES workspaces(workspace_id) ON UPDATE CASCADE ON DELETE CASCADE,
    created_by_gid bigint CONSTRAINT fk_new_folders_to_groups_gid REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE SET NULL,
    created timestamptz DEFAULT now() NOT NULL,
    modified timestamptz DEFAULT now() NOT NULL,
    trashed timestamptz,
    trashed_explicitly boolean DEFAULT false NOT NULL,
    trashed_by bigint CONSTRAINT fk_folders_trashed_by_user_id REFERENCES users(id) ON UPDATE CASCADE ON DELETE SET NULL
);

CREATE TABLE projects_to_folders (
    project_uuid varchar CONSTRAINT fk_projects_to_folders_to_projects_uuid REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    folder_id bigint CONSTRAINT fk_projects_to_folders_to_folders_id REFERENCES folders_v2(folder_id) ON UPDATE CASCADE ON DELETE CASCADE,
    user_id bigint CONSTRAINT fk_projects_to_folders_to_user_id REFERENCES users(id) ON UPDATE CASCADE ON DELETE CASCADE,
    created timestamptz DEFAULT now() NOT NULL,
    modified timestamptz DEFAULT now() NOT NULL,
    CONSTRAINT projects_to_folders_project_uuid_folder_id_user_id_key UNIQUE (project_uuid, folder_id, user_id)
);

CREATE TABLE tags (
    id bigserial CONSTRAINT tags_pkey PRIMARY KEY,
    name varchar NOT NULL,
    description varchar,
    color varchar NOT NULL,
    priority integer
);

CREATE TABLE tags_access_rights (
    tag_id bigint NOT NULL CONSTRAINT fk_tag_to_group_tag_id REFERENCES tags(id) ON UPDATE CASCADE ON DELETE CASCADE,
    group_id bigint NOT NULL CONSTRAINT fk_tag_to_group_group_id REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE CASCADE,
    read boolean DEFAULT true NOT NULL,
    write boolean DEFAULT false NOT NULL,
    delete boolean DEFAULT false NOT NULL,
    created timestamp DEFAULT now() NOT NULL,
    modified timestamp DEFAULT now() NOT NULL,
    CONSTRAINT tags_to_groups_tag_id_group_id_key UNIQUE (tag_id, group_id)
);

CREATE TABLE projects_tags (
    project_id bigint CONSTRAINT project_tags_project_id_fkey REFERENCES projects(id) ON UPDATE CASCADE ON DELETE SET NULL,
    tag_id bigint NOT NULL CONSTRAINT study_tags_tag_id_fkey REFERENCES tags(id) ON UPDATE CASCADE ON DELETE CASCADE,
    project_uuid_for_rut varchar NOT NULL,
    CONSTRAINT project_tags_project_uuid_unique UNIQUE (project_uuid_for_rut, tag_id)
);

CREATE TABLE wallets (
    wallet_id bigserial CONSTRAINT wallets_pkey PRIMARY KEY,
    name varchar NOT NULL,
    description varchar,
    owner bigint NOT NULL CONSTRAINT fk_wallets_gid_groups REFERENCES groups(gid) ON UPDATE CASCADE ON DELETE RESTRICT,
    thumbnail varchar,
    status walletstatus NOT NULL,
    created timestamptz DEFAULT now() NOT NULL,
    modified timestamptz DEFAULT now() NOT NULL,
    product_name varchar NOT NULL CONSTRAINT fk_wallets_product_name REFERENCES products(name) ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE projects_to_wallet (
    project_uuid varchar NOT NULL CONSTRAINT projects_to_wallet_pkey PRIMARY KEY
        CONSTRAINT fk_projects_wallet_project_uuid REFERENCES projects(uuid) ON UPDATE CASCADE ON DELETE CASCADE,
    wallet_id bigint NOT NULL CONSTRAINT fk_projects_wallet_wallets_id REFERENCES wallets(wallet_id) ON UPDATE CASCADE ON DELETE CASCADE,
    created timestamptz DEFAULT now() NOT NULL,
    modified timestamptz DEFAULT now() NOT NULL
);
