"""Taxonomies of the synthetic job marketplace: occupations (titles), seniority, skills, companies, geo.

Every taxonomy reserves id 0 for "could not be standardized". Each entry has a canonical name and the
aliases the raw-text generator draws from (and the standardizers learn to map back).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# occupation -> (industry, title aliases, skill pool). Related occupations share skills, which gives
# the latent structure a second level (e.g. data scientist ~ ML engineer ~ data analyst).
OCCUPATIONS: dict[str, tuple[str, list[str], list[str]]] = {
    "software engineer": ("tech", ["software engineer", "software developer", "swe", "programmer", "software dev"],
                          ["python", "java", "go", "kubernetes", "sql", "git", "distributed systems", "c++", "aws", "microservices"]),
    "frontend engineer": ("tech", ["frontend engineer", "front end developer", "ui engineer", "web developer"],
                          ["javascript", "typescript", "react", "css", "html", "git", "ux design", "graphql"]),
    "data scientist": ("tech", ["data scientist", "applied scientist", "research scientist"],
                       ["python", "machine learning", "statistics", "sql", "deep learning", "pandas", "experimentation", "r"]),
    "machine learning engineer": ("tech", ["machine learning engineer", "ml engineer", "ai engineer"],
                                  ["python", "machine learning", "deep learning", "pytorch", "kubernetes", "distributed systems", "spark", "aws"]),
    "data analyst": ("tech", ["data analyst", "business intelligence analyst", "bi analyst", "analytics specialist"],
                     ["sql", "excel", "tableau", "statistics", "python", "data visualization", "r"]),
    "devops engineer": ("tech", ["devops engineer", "site reliability engineer", "sre", "platform engineer"],
                        ["kubernetes", "aws", "terraform", "linux", "go", "monitoring", "ci cd", "python"]),
    "product manager": ("tech", ["product manager", "product owner", "pm"],
                        ["product strategy", "roadmapping", "agile", "stakeholder management", "sql", "ux design", "experimentation"]),
    "registered nurse": ("health", ["registered nurse", "rn", "staff nurse", "nurse"],
                         ["patient care", "iv therapy", "bls", "acls", "electronic health records", "triage", "medication administration"]),
    "physician": ("health", ["physician", "doctor", "md", "medical doctor"],
                  ["patient care", "diagnosis", "electronic health records", "acls", "internal medicine", "clinical research"]),
    "pharmacist": ("health", ["pharmacist", "clinical pharmacist", "pharmd"],
                   ["medication administration", "pharmacology", "patient care", "compounding", "clinical research"]),
    "accountant": ("finance", ["accountant", "staff accountant", "cpa", "accounting specialist"],
                   ["excel", "gaap", "financial reporting", "quickbooks", "tax preparation", "auditing", "reconciliation"]),
    "financial analyst": ("finance", ["financial analyst", "finance analyst", "fp&a analyst"],
                          ["excel", "financial modeling", "forecasting", "sql", "financial reporting", "valuation", "powerpoint"]),
    "sales representative": ("sales", ["sales representative", "account executive", "sales rep", "ae", "business development representative"],
                             ["salesforce", "negotiation", "cold calling", "lead generation", "crm", "account management", "powerpoint"]),
    "marketing manager": ("sales", ["marketing manager", "digital marketing manager", "growth marketer", "marketing lead"],
                          ["seo", "content marketing", "google analytics", "social media", "crm", "copywriting", "experimentation"]),
    "mechanical engineer": ("industry", ["mechanical engineer", "design engineer", "mech engineer"],
                            ["cad", "solidworks", "matlab", "manufacturing", "fea", "thermodynamics", "prototyping"]),
    "electrician": ("industry", ["electrician", "journeyman electrician", "electrical technician"],
                    ["wiring", "blueprint reading", "plc", "troubleshooting", "osha", "conduit bending"]),
    "teacher": ("education", ["teacher", "high school teacher", "educator", "instructor"],
                ["lesson planning", "classroom management", "curriculum development", "powerpoint", "tutoring", "special education"]),
    "truck driver": ("logistics", ["truck driver", "cdl driver", "delivery driver", "class a driver"],
                     ["cdl", "route planning", "logbook", "forklift", "osha", "customer service"]),
}

SENIORITY = ["junior", "mid", "senior", "staff", "manager"]
SENIORITY_ALIASES = {
    "junior": ["junior", "jr", "jr.", "entry level", "associate", "intern"],
    "mid": [""],  # no prefix: mid level
    "senior": ["senior", "sr", "sr.", "snr"],
    "staff": ["staff", "lead", "principal"],
    "manager": ["head of", "manager of", "director of"],
}

SKILL_SYNONYMS = {
    "machine learning": ["ml", "machine-learning"], "deep learning": ["dl", "deep-learning", "neural networks"],
    "javascript": ["js", "java script"], "typescript": ["ts"], "kubernetes": ["k8s", "kube"],
    "c++": ["cpp", "c plus plus"], "sql": ["structured query language", "sql queries"],
    "aws": ["amazon web services"], "ci cd": ["ci/cd", "continuous integration"], "excel": ["ms excel", "microsoft excel"],
    "powerpoint": ["ms powerpoint", "ppt"], "electronic health records": ["ehr", "emr"], "bls": ["basic life support"],
    "acls": ["advanced cardiac life support"], "gaap": ["us gaap"], "seo": ["search engine optimization"],
    "cad": ["computer aided design", "autocad"], "plc": ["programmable logic controllers"], "cdl": ["commercial drivers license"],
    "ux design": ["user experience", "ux"], "data visualization": ["dataviz", "data viz"], "statistics": ["stats"],
    "crm": ["customer relationship management"], "go": ["golang"], "pytorch": ["torch"],
    "financial modeling": ["financial modelling"], "google analytics": ["ga4"],
}

CITIES = [
    ("san francisco", ["san francisco, ca", "sf", "san francisco bay area", "sf bay area"]),
    ("new york", ["new york, ny", "nyc", "new york city", "manhattan"]),
    ("seattle", ["seattle, wa", "greater seattle area"]), ("austin", ["austin, tx", "austin texas"]),
    ("boston", ["boston, ma", "greater boston"]), ("chicago", ["chicago, il", "chi town"]),
    ("los angeles", ["los angeles, ca", "la", "greater los angeles"]), ("denver", ["denver, co"]),
    ("atlanta", ["atlanta, ga", "atl"]), ("miami", ["miami, fl"]), ("dallas", ["dallas, tx", "dfw"]),
    ("houston", ["houston, tx"]), ("phoenix", ["phoenix, az"]), ("philadelphia", ["philadelphia, pa", "philly"]),
    ("washington", ["washington, dc", "dc", "dmv area"]), ("minneapolis", ["minneapolis, mn", "twin cities"]),
    ("portland", ["portland, or", "pdx"]), ("san diego", ["san diego, ca"]), ("detroit", ["detroit, mi"]),
    ("raleigh", ["raleigh, nc", "research triangle"]), ("london", ["london, uk", "greater london"]),
    ("berlin", ["berlin, germany"]), ("toronto", ["toronto, on", "gta"]), ("bangalore", ["bengaluru", "bangalore, india"]),
]

INDUSTRIES = sorted({v[0] for v in OCCUPATIONS.values()})
_SYLLABLES = ["ac", "me", "zen", "tri", "no", "va", "lux", "cor", "pix", "ion", "ly", "tek", "bright", "blue",
              "ora", "qua", "sol", "vex", "mar", "tel", "gen", "axi", "omni", "pro", "data", "health", "fin"]
COMPANY_SUFFIXES = ["", " inc", " inc.", " llc", " corp", " corporation", " co", " ltd", " group", " technologies"]


def company_names(n: int, rng: np.random.Generator) -> list[str]:
    names: list[str] = []
    seen = set()
    while len(names) < n:
        k = rng.integers(2, 4)
        name = "".join(rng.choice(_SYLLABLES, size=k))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


@dataclass
class Taxonomies:
    """Canonical names (index = taxonomy id; index 0 is the reserved 'unknown') and their aliases."""

    titles: list[str]
    seniority: list[str]
    skills: list[str]
    companies: list[str]
    geo: list[str]
    company_industry: list[str] = field(default_factory=list)
    aliases: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return self.__dict__.copy()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> "Taxonomies":
        return cls(**json.loads(Path(path).read_text()))

    def size(self, name: str) -> int:
        return len(getattr(self, name))


def build_taxonomies(n_companies: int, rng: np.random.Generator) -> Taxonomies:
    titles = ["<unknown>"] + list(OCCUPATIONS)
    skills = sorted({s for _, _, pool in OCCUPATIONS.values() for s in pool})
    comp = company_names(n_companies, rng)
    industries = [str(rng.choice(INDUSTRIES)) for _ in comp]
    return Taxonomies(
        titles=titles,
        seniority=["<unknown>"] + SENIORITY,
        skills=["<unknown>"] + skills,
        companies=["<unknown>"] + comp,
        geo=["<unknown>"] + [c for c, _ in CITIES],
        company_industry=["<unknown>"] + industries,
        aliases={
            "titles": {t: OCCUPATIONS[t][1] for t in titles[1:]},
            "seniority": SENIORITY_ALIASES,
            "skills": {s: [s] + SKILL_SYNONYMS.get(s, []) for s in skills},
            "geo": {c: [c] + al for c, al in CITIES},
            "companies": {c: [c + s for s in COMPANY_SUFFIXES] for c in comp},
        },
    )
